"""`python -m collab` is the `collab` command."""

from .cli.main import main

raise SystemExit(main())
