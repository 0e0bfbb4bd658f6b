"""`srv6-cni`: the CNI executable the container runtime runs; it forwards to the node agent.

It validates the call (env vars and network config, CNI spec 1.1, accepting 0.4.0 and
1.0.0 configs), answers VERSION itself, sends everything else to the agent over its unix
socket (`agentSocket` in the config, `/run/srv6ctl/cni.sock` by default) and prints the
agent's result or a spec error object on stdout. It never prints a traceback: every
failure becomes `{"cniVersion", "code", "msg", "details"}` and exit status 1.

Transport: one length-prefixed JSON frame each way over the unix socket, not gRPC. The
shim's start-up is most of an ADD, and `import grpc` alone costs ~50 ms here; see
cni/README.md ("Transport") for the measurement. Keep imports in this file (and in
cni.protocol) to built-in modules and `json`: `srv6-cni install` runs the shim with
`python -I -S`, where every stdlib import is paid for on every ADD.
"""

from __future__ import annotations

import os
import sys

from cni import protocol
from cni.protocol import CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def call_agent(request: protocol.Request) -> Any:
    """Send the request to the agent and return its result (None for commands without one)."""
    # `_socket`, not `socket` (whose enum set-up costs ms), and only here: VERSION and
    # requests refused by validation never load the extension module.
    import _socket

    path = request.agent_socket
    unavailable = (
        protocol.NOT_AVAILABLE if request.command == "STATUS" else protocol.TRY_AGAIN_LATER
    )
    try:
        # Before connecting: a config we decoded but cannot encode again (nested almost to
        # the interpreter's limit) is a decoding problem, not an unreachable agent.
        request_frame = protocol.frame(request.to_payload())
    except ValueError as err:
        raise CniError(
            protocol.DECODING_FAILURE, "error encoding network config", str(err)
        ) from None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(request.timeout)
        try:
            sock.connect(path)
        except OSError as err:
            raise CniError(
                unavailable,
                "srv6ctl agent is not running",
                f"cannot connect to {path}: {err.strerror or err}",
            ) from None
        try:
            sock.sendall(request_frame)
            reply = protocol.recv_frame(sock)
        except TimeoutError:
            raise CniError(
                unavailable,
                "srv6ctl agent did not answer",
                f"no reply on {path} within {request.timeout:g} s",
            ) from None
        except (OSError, ValueError) as err:
            raise CniError(
                unavailable, "srv6ctl agent connection failed", f"{path}: {err}"
            ) from None
    finally:
        sock.close()
    if not isinstance(reply, dict):
        raise CniError(protocol.DECODING_FAILURE, "malformed reply from the agent", repr(reply))
    if "error" in reply:
        error = reply["error"]
        raise CniError.from_result(error if isinstance(error, dict) else {})
    return reply.get("result")


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, Any]:
    """(exit status, JSON to print or None): the whole plugin, minus the real stdio."""
    config: object = None
    try:
        if environ.get("CNI_COMMAND") == "VERSION":
            return 0, _version(stdin)
        config = _lenient_json(stdin)
        request = protocol.request_from_env(environ, stdin)
        if request.command in ("ADD", "CHECK") and not os.path.exists(request.netns):
            # Checked here too so a vanished pod is reported as such even with no agent.
            raise CniError(
                protocol.UNKNOWN_CONTAINER,
                "container network namespace does not exist",
                f"CNI_NETNS {request.netns}",
            )
        result = call_agent(request)
        return 0, result if request.command == "ADD" else None
    except CniError as err:
        return 1, err.to_result(protocol.error_version(config))


def _lenient_json(stdin: bytes) -> object:
    # Only to pick the cniVersion of an error result; validation reports the real problem.
    try:
        return protocol.loads(stdin)
    except ValueError:
        return None


def _version(stdin: bytes) -> dict[str, Any]:
    # The spec echoes the caller's cniVersion; a VERSION call may come with no config at all.
    config = _lenient_json(stdin)
    version = protocol.CNI_VERSION
    if isinstance(config, dict) and isinstance(config.get("cniVersion"), str):
        version = config["cniVersion"]
    return {"cniVersion": version, "supportedVersions": list(protocol.SUPPORTED_VERSIONS)}


def main() -> int:
    if sys.argv[1:2] == ["install"]:
        # Run by an operator or an installer, never by a runtime (which passes no argv).
        try:
            from cni.install import cli
        except ImportError:  # the self-contained executable carries the plugin only
            sys.stderr.write("srv6-cni install: run it from the srv6ctl image or package\n")
            return 2
        return cli(sys.argv[2:])
    try:
        stdin = b"" if sys.stdin is None else sys.stdin.buffer.read()
    except OSError as err:
        error = CniError(protocol.IO_FAILURE, "error reading network config from stdin", str(err))
        sys.stdout.write(protocol.dumps(error.to_result()) + "\n")
        return 1
    try:
        status, output = run(os.environ, stdin)
    except Exception as err:  # a bug of ours still answers in the spec's shape
        status = 1
        output = CniError(
            protocol.INTERNAL_ERROR, "srv6-cni failed", f"{type(err).__name__}: {err}"
        ).to_result()
    if output is not None:
        sys.stdout.write(protocol.dumps(output) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
