"""`python -m srv6ctl.lab up|status|exec|scale|down` — `srv6ctl lab` before the CLI wiring."""

import sys

from srv6ctl.lab.cli import main

sys.exit(main())
