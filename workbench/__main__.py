"""``python -m workbench``: the same command as ``workbench``."""

from .cli.main import main

raise SystemExit(main())
