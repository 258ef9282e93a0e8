"""``python -m safeload``: the same command line as the ``safeload`` script."""

from safeload.cli import main

raise SystemExit(main())
