"""``python -m workbench``: the same command as ``workbench``."""

from .cli import main

raise SystemExit(main())
