"""``python -m md_cli``: the ``md`` inspection CLI, for when the console script is not on the PATH."""

from md_cli.main import main

raise SystemExit(main())
