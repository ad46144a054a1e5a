"""`python -m benchlib` (with scripts/ on sys.path) is `scripts/bench`."""

from .cli import main

raise SystemExit(main())
