"""The one-command lab: emulated nodes and pods in network namespaces, real agents, real CNI.

`srv6ctl lab up` builds it (see `srv6ctl.lab.build`), `srv6ctl verify` proves it on the
wire, `srv6ctl trace` explains one flow through it. Imports stay light here: the CLI
registers its subcommands from `srv6ctl.lab.cli` without loading pyroute2 or rich.
"""

DEFAULT_STATE_DIR = "/run/srv6ctl-lab"
DEFAULT_PREFIX = "s6lab"
