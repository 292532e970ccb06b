import sys

from feeder.cli import main

sys.exit(main())
