"""`python -m srv6ctl.verify` — `srv6ctl verify` before the CLI wiring."""

import sys

from srv6ctl.verify.cli import main

sys.exit(main())
