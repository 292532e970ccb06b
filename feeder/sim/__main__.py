"""``python -m feeder.sim``: the same as the ``md-sim`` console script."""

from feeder.sim.cli import main

raise SystemExit(main())
