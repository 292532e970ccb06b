"""``python -m client``: the ``md`` inspection CLI, for when the console script is not on the PATH."""

from client.cli import main

raise SystemExit(main())
