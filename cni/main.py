"""`srv6-cni`: the CNI executable kubelet runs. This version answers VERSION only.

The agent-side wiring (ADD/DEL/CHECK/STATUS/GC forwarded to the agent) is the next step;
until then every other command returns a CNI error with code 11 ("try again later"), the
spec's answer for a plugin that cannot serve the request yet.
"""

from __future__ import annotations

import json
import os
import sys

SUPPORTED_VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]
CNI_VERSION = "1.1.0"


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        print(json.dumps({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS}))
        return 0
    print(
        json.dumps(
            {
                "cniVersion": CNI_VERSION,
                "code": 11,
                "msg": f"CNI_COMMAND {command or '(unset)'} is not served yet",
                "details": "this srv6-cni build implements VERSION only",
            }
        )
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
