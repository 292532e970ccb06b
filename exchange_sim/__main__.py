"""``python -m exchange_sim``: the same as the ``md-sim`` console script."""

from exchange_sim.cli import main

raise SystemExit(main())
