"""`python -m ingestd` runs the command line."""

from ingestd.cli import main

raise SystemExit(main())
