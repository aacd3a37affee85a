"""``python -m mahiax``: the command line."""

from mahiax.cli import main

raise SystemExit(main())
