"""`python -m collab` is the `collab` command."""

from .cli import main

raise SystemExit(main())
