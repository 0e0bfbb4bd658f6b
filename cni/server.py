"""The agent side of srv6-cni: a unix-socket server that turns CNI calls into ipam6 + wiring.

The agent embeds one `CniServer` per node:

    server = CniServer(node, allocator, PodWiring(node_netns), hooks=my_hooks)
    server.start()          # listens on /run/srv6ctl/cni.sock (0600), serves in threads
    ...
    server.stop()

Each connection carries one request (see `cni.protocol` for the frame) and is served on
its own thread; requests for different pods run concurrently, requests for the same
(container ID, ifname) one after the other, and GC waits for every ADD/DEL in flight and
holds new ones back, as the spec asks of runtimes (which we do not rely on).

- ADD allocates (keyed by container ID + ifname, idempotent), wires, calls
  `hooks.on_pod_added` (the agent adds the pod's End.DX6/End.DX4 SIDs) and returns the
  CNI result; the same ADD again returns the same result.
- DEL calls `hooks.before_teardown`, tears the wiring down, calls `hooks.on_pod_deleted`,
  releases the allocation;
  unknown pods succeed (spec: DEL is idempotent and best-effort).
- CHECK verifies addresses and routes on both sides, and `hooks.check_pod` (the SIDs).
- STATUS reports readiness: the agent's flag and hook, the store, the pod pool.
- GC releases allocations and wiring of attachments missing from
  `cni.dev/valid-attachments`.

Store failures become code 11 (try again later). An exhausted pod pool becomes code 100
and STATUS reports 50: kubelet retries a failed sandbox anyway, but only a not-ready
network plugin (containerd turns STATUS into the node's NetworkReady condition) stops the
scheduler from sending more pods to a full node.

One network per node: allocations are keyed by (node, container ID, ifname), not by
network name, so two srv6-cni networks on one node would share (and GC) one pool.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cni import protocol
from cni.protocol import CniError, Request
from cni.wiring import (
    DEFAULT_MTU,
    Attachment,
    InterfaceExists,
    NetnsInvalid,
    NetnsIsNode,
    NetnsNotFound,
    PodSpec,
    PodWiring,
    WiringError,
    host_ifname,
)
from ipam6.allocator import AllocationError, Allocator, PodAllocation
from ipam6.plan import PoolExhausted
from ipam6.store.base import StoreError

log = logging.getLogger(__name__)

_IO_TIMEOUT_S = 10.0  # a client that sends nothing must not pin a thread
_LISTEN_BACKLOG = 256  # kubelet may start a burst of sandboxes at once


class CniHooks:
    """What the agent plugs into the server. Override what you need; defaults do nothing.

    Hooks run on the request's thread, under that pod's lock.
    """

    def readiness(self) -> tuple[int, str] | None:
        """None when ready; else (50 or 51, reason) — e.g. the dataplane is not programmed."""
        return None

    def on_pod_added(self, allocation: PodAllocation, attachment: Attachment) -> None:
        """The pod is wired: add its End.DX6 (and End.DX4) SID and re-render.

        Raising fails the ADD with code 11; the server undoes the wiring and allocation.
        """

    def before_teardown(self, allocation: PodAllocation, host_ifname: str) -> None:
        """DEL is about to remove the pod's interface: a dataplane holding it lets go first.

        Exceptions are logged, not returned: DEL must succeed as far as it can.
        """

    def on_pod_deleted(self, allocation: PodAllocation, host_ifname: str) -> None:
        """The pod's interface is gone and its allocation is about to be released.

        Exceptions are logged, not returned: DEL must succeed as far as it can.
        """

    def on_request(self, command: str, code: int, seconds: float) -> None:
        """Every request, answered: its command, result code (0 = success) and duration."""

    def on_interface_removed(self, host_ifname: str) -> None:
        """A DEL removed the pod's interface while the store was unreachable: the
        allocation is released later (`retry_pending_releases`), the SIDs must go now."""

    def check_pod(self, allocation: PodAllocation, host_ifname: str) -> list[str]:
        """Problems with what the agent owns for this pod (its SIDs); [] when all is well."""
        return []


@dataclass(frozen=True)
class GcReport:
    released: list[tuple[str, str]] = field(default_factory=list)  # (container ID, ifname)
    deleted_interfaces: list[str] = field(default_factory=list)  # leaked node ends
    errors: list[str] = field(default_factory=list)


class _Gate:
    """A readers-writer gate: ADD/DEL/CHECK share it, GC takes it alone (writer first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._writers_waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str]) -> Iterator[None]:
        with self._mutex:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._mutex:
                users[0] -= 1
                if not users[0]:
                    del self._locks[key]


def _pod_name(args: dict[str, str]) -> str:
    namespace, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    return f"{namespace}/{name}" if namespace and name else name


class CniServer:
    """Serves srv6-cni requests for one node; see the module docstring."""

    def __init__(
        self,
        node: str,
        allocator: Allocator,
        wiring: PodWiring,
        *,
        socket_path: str = protocol.DEFAULT_AGENT_SOCKET,
        hooks: CniHooks | None = None,
        mtu: int = DEFAULT_MTU,
        prepare_node: bool = True,
    ) -> None:
        self.node = node
        self.allocator = allocator
        self.wiring = wiring
        self.socket_path = socket_path
        self.hooks = hooks or CniHooks()
        self.mtu = mtu
        self.prepare_node = prepare_node
        self._not_ready: str | None = None
        self._node_id: int | None = None
        self._gate = _Gate()
        self._locks = _KeyedLocks()
        self._listener: socket.socket | None = None
        self._socket_identity: tuple[int, int] | None = None
        self._accept_thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._workers_lock = threading.Lock()
        self._stopping = threading.Event()
        self._pending_releases: set[tuple[str, str]] = set()
        self._pending_lock = threading.Lock()

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the node namespace, bind the socket and serve in the background."""
        if self._listener is not None:
            raise RuntimeError("CniServer is already started")
        if self.prepare_node:
            self.wiring.prepare_node()
        self._stopping.clear()
        self._listener = bind_private(self.socket_path)
        st = os.stat(self.socket_path)
        self._socket_identity = (st.st_dev, st.st_ino)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"cni-accept:{self.node}", daemon=True
        )
        self._accept_thread.start()
        log.info("srv6-cni server for node %s listening on %s", self.node, self.socket_path)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to `timeout`), remove the socket."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._workers_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)
        self._remove_socket()

    def __enter__(self) -> CniServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """The agent's own readiness: while not ready, ADD gets 11 and STATUS 50."""
        self._not_ready = None if ready else (reason or "the srv6ctl agent is not ready")

    def _remove_socket(self) -> None:
        # Only our own socket: a newer agent may already have replaced it.
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._socket_identity:
                os.unlink(self.socket_path)

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept on %s failed", self.socket_path)
                self._stopping.wait(0.1)  # e.g. EMFILE: do not spin while it lasts
                continue
            worker = threading.Thread(
                target=self._serve_connection, args=(conn,), name="cni-request", daemon=True
            )
            with self._workers_lock:
                self._workers.add(worker)
            worker.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(_IO_TIMEOUT_S)
                try:
                    payload = protocol.recv_frame(conn)
                except (OSError, ValueError) as err:
                    reply: dict[str, Any] = {
                        "error": CniError(
                            protocol.DECODING_FAILURE, "malformed request frame", str(err)
                        ).to_result()
                    }
                else:
                    reply = self.handle(payload)
                try:
                    protocol.send_frame(conn, reply)
                except OSError as err:
                    log.warning("could not send the reply to srv6-cni: %s", err)
        finally:
            with self._workers_lock:
                self._workers.discard(threading.current_thread())

    # --- requests ------------------------------------------------------------------------

    def handle(self, payload: object) -> dict[str, Any]:
        """One request frame in, one reply frame out; never raises."""
        start = time.perf_counter()
        reply = self._handle(payload)
        command = payload.get("command") if isinstance(payload, dict) else None
        error = reply.get("error")
        code = int(error.get("code", protocol.INTERNAL_ERROR)) if error else 0
        try:
            self.hooks.on_request(str(command or ""), code, time.perf_counter() - start)
        except Exception:
            log.exception("on_request hook failed")
        return reply

    def _handle(self, payload: object) -> dict[str, Any]:
        version = protocol.error_version(
            payload.get("config") if isinstance(payload, dict) else None
        )
        try:
            request = Request.from_payload(payload)
            return {"result": self.dispatch(request)}
        except CniError as err:
            log.info("CNI request failed: %s", err)
            return {"error": err.to_result(version)}
        except Exception as err:
            log.exception("CNI request crashed")
            return {
                "error": CniError(
                    protocol.INTERNAL_ERROR,
                    "internal error in the srv6ctl agent",
                    f"{type(err).__name__}: {err}",
                ).to_result(version)
            }

    def dispatch(self, request: Request) -> dict[str, Any] | None:
        if request.command == "ADD":
            return self.add(request)
        if request.command == "DEL":
            self.delete(request)
        elif request.command == "CHECK":
            self.check(request)
        elif request.command == "STATUS":
            self.status()
        elif request.command == "GC":
            report = self.gc(protocol.valid_attachments(request.config))
            if report.errors:
                raise CniError(
                    protocol.TRY_AGAIN_LATER,
                    f"GC left {len(report.errors)} stale resources",
                    "; ".join(report.errors),
                )
        else:
            raise CniError(
                protocol.INVALID_ENVIRONMENT, f"CNI_COMMAND {request.command} is not served here"
            )
        return None

    def add(self, request: Request) -> dict[str, Any]:
        args = request.cni_args
        key = (request.container_id, request.ifname)
        with self._gate.shared(), self._locks.hold(key):
            self._require_ready()
            with _store_errors("allocating the pod's addresses"):
                before = self.allocator.pod(self.node, *key)
                node_id = self._claimed_node_id()
                try:
                    allocation = self.allocator.allocate_pod(
                        self.node,
                        request.container_id,
                        request.ifname,
                        pod=_pod_name(args),
                        uid=args.get("K8S_POD_UID", ""),
                        netns=request.netns,
                    )
                except PoolExhausted as err:
                    raise CniError(
                        protocol.POOL_EXHAUSTED,
                        str(err),
                        f"node {self.node} has no free pod address; delete pods or give "
                        "nodes larger prefixes (addressPlan.nodePrefixLengthV6/V4)",
                    ) from None
                except ValueError as err:
                    raise CniError(protocol.INVALID_ENVIRONMENT, str(err)) from None
            spec = self._spec(request, allocation, node_id)
            try:
                attachment = _wired(lambda: self.wiring.setup(spec))
                try:
                    self.hooks.on_pod_added(allocation, attachment)
                except Exception as err:
                    log.exception("on_pod_added hook failed for %s", allocation.owner)
                    raise CniError(
                        protocol.TRY_AGAIN_LATER,
                        "the srv6ctl agent could not program the pod",
                        f"{type(err).__name__}: {err}",
                    ) from None
            except BaseException:
                if before is None:
                    self._undo_add(allocation)
                raise
            return self._result(request, attachment)

    def _undo_add(self, allocation: PodAllocation) -> None:
        # Leave nothing behind from a failed first ADD; the runtime's DEL finds nothing.
        try:
            self.wiring.teardown(allocation.container_id, allocation.interface)
        except (WiringError, OSError):
            log.exception("undoing the wiring of %s", allocation.owner)
        try:
            self.allocator.release_pod(self.node, allocation.container_id, allocation.interface)
        except (StoreError, AllocationError):
            log.exception("releasing %s after a failed ADD", allocation.owner)

    def delete(self, request: Request) -> None:
        key = (request.container_id, request.ifname)
        with self._gate.shared(), self._locks.hold(key):
            self._delete(*key)

    def _delete(self, container_id: str, ifname: str) -> bool:
        try:
            allocation = self.allocator.pod(self.node, container_id, ifname)
        except (StoreError, AllocationError) as err:
            # DEL must not wait for the store: the interface is local and goes now; the
            # address is released when the store answers again (retry_pending_releases).
            log.warning(
                "store unreachable during DEL of %s/%s (%s): release deferred",
                container_id,
                ifname,
                err,
            )
            allocation = None
            with self._pending_lock:
                self._pending_releases.add((container_id, ifname))
        if allocation is not None:
            try:
                self.hooks.before_teardown(allocation, host_ifname(container_id, ifname))
            except Exception:
                log.exception("before_teardown hook failed for %s", allocation.owner)
        try:
            self.wiring.teardown(container_id, ifname)
        except (WiringError, OSError) as err:
            raise CniError(
                protocol.TRY_AGAIN_LATER, "could not remove the pod's interface", str(err)
            ) from None
        if allocation is None:
            if (container_id, ifname) in self._pending_releases:
                self.hooks.on_interface_removed(host_ifname(container_id, ifname))
            return False
        try:
            self.hooks.on_pod_deleted(allocation, host_ifname(container_id, ifname))
        except Exception:
            # The agent re-renders from the store; a failed hook must not leak the address.
            log.exception("on_pod_deleted hook failed for %s", allocation.owner)
        with _store_errors("releasing the pod's addresses"):
            self.allocator.release_pod(self.node, container_id, ifname)
        return True

    def check(self, request: Request) -> None:
        key = (request.container_id, request.ifname)
        with self._gate.shared(), self._locks.hold(key):
            with _store_errors("looking up the pod's allocation"):
                allocation = self.allocator.pod(self.node, *key)
                node_id = self._claimed_node_id()
            if allocation is None:
                raise CniError(
                    protocol.UNKNOWN_CONTAINER,
                    "container unknown to srv6-cni",
                    f"no allocation for {request.container_id}/{request.ifname} on node "
                    f"{self.node}",
                )
            if not os.path.exists(request.netns):
                raise CniError(
                    protocol.UNKNOWN_CONTAINER,
                    "container network namespace does not exist",
                    f"CNI_NETNS {request.netns}",
                )
            spec = self._spec(request, allocation, node_id)
            problems = self._prev_result_problems(request, spec)
            problems += _wired(lambda: self.wiring.check(spec))
            problems += self.hooks.check_pod(allocation, host_ifname(*key))
            if problems:
                raise CniError(
                    protocol.CHECK_FAILED,
                    f"pod network of {request.container_id}/{request.ifname} is broken",
                    "; ".join(problems),
                )

    @staticmethod
    def _prev_result_problems(request: Request, spec: PodSpec) -> list[str]:
        listed = set()
        for ip in protocol.normalize_result(request.config.get("prevResult") or {})["ips"]:
            with contextlib.suppress(ValueError, TypeError):
                listed.add(ipaddress.ip_interface(ip.get("address")).ip)
        return [
            f"prevResult does not list {address}"
            for address in (spec.ipv6, spec.ipv4)
            if address is not None and address not in listed
        ]

    def status(self) -> None:
        reason = self._not_ready
        if reason is not None:
            raise CniError(protocol.NOT_AVAILABLE, "srv6ctl agent is not ready", reason)
        verdict = self.hooks.readiness()
        if verdict is not None:
            code, why = verdict
            raise CniError(code, "srv6ctl agent is not ready", why)
        try:
            node_id = self._claimed_node_id()
            used = len(self.allocator.pods(self.node))
        except (StoreError, AllocationError) as err:
            raise CniError(
                protocol.NOT_AVAILABLE, "the address store is unreachable", str(err)
            ) from None
        capacity = len(self.allocator.plan.pod_indexes)
        if used >= capacity:
            raise CniError(
                protocol.NOT_AVAILABLE,
                f"pool pod addresses of node {self.node} is exhausted",
                f"all {capacity} addresses of {self.allocator.plan.pod_prefix_v6(node_id)} "
                "are in use",
            )

    def gc(self, valid: set[tuple[str, str]]) -> GcReport:
        """Release allocations and wiring of every attachment not in `valid`."""
        report = GcReport()
        with self._gate.exclusive():
            with _store_errors("listing the node's pods"):
                allocations = self.allocator.pods(self.node)
            for allocation in allocations:
                key = (allocation.container_id, allocation.interface)
                if key in valid:
                    continue
                try:
                    self._delete(*key)
                    report.released.append(key)
                except CniError as err:
                    report.errors.append(f"{allocation.owner}: {err.msg}: {err.details}")
            keep = {host_ifname(*key) for key in valid}
            try:
                leaked = self.wiring.host_interfaces() - keep
                for name in sorted(leaked):
                    if self.wiring.delete_host_interface(name):
                        report.deleted_interfaces.append(name)
            except (WiringError, OSError) as err:
                report.errors.append(f"removing leaked interfaces: {err}")
        if report.released or report.deleted_interfaces:
            log.info(
                "GC released %d attachments, removed %d leaked interfaces",
                len(report.released),
                len(report.deleted_interfaces),
            )
        return report

    def retry_pending_releases(self) -> int:
        """Release the allocations of pods deleted while the store was down; how many are
        still pending. Raises StoreError when the store is still unreachable."""
        with self._pending_lock:
            pending = sorted(self._pending_releases)
        for key in pending:
            with self._locks.hold(key):
                self.allocator.release_pod(self.node, *key)
            with self._pending_lock:
                self._pending_releases.discard(key)
        with self._pending_lock:
            return len(self._pending_releases)

    def attachments(self) -> list[tuple[PodAllocation, str]]:
        """Every pod of this node with its node-side interface name (agent resync)."""
        return [
            (a, host_ifname(a.container_id, a.interface)) for a in self.allocator.pods(self.node)
        ]

    # --- helpers -------------------------------------------------------------------------

    def _require_ready(self) -> None:
        reason = self._not_ready
        if reason is None:
            verdict = self.hooks.readiness()
            reason = None if verdict is None else verdict[1]
        if reason is not None:
            raise CniError(protocol.TRY_AGAIN_LATER, "srv6ctl agent is not ready", reason)

    def _claimed_node_id(self) -> int:
        if self._node_id is None:
            self._node_id = self.allocator.claim_node(self.node)  # idempotent
        return self._node_id

    def _spec(self, request: Request, allocation: PodAllocation, node_id: int) -> PodSpec:
        addresses = allocation.addresses
        return PodSpec(
            container_id=request.container_id,
            ifname=request.ifname,
            netns=request.netns,
            ipv6=addresses.ipv6,
            ipv4=addresses.ipv4,
            gateway_v4=(
                None if addresses.ipv4 is None else self.allocator.plan.gateway_v4(node_id)
            ),
            mtu=int(request.config.get("mtu", self.mtu)),
        )

    @staticmethod
    def _result(request: Request, attachment: Attachment) -> dict[str, Any]:
        ips = [
            {
                "address": f"{attachment.ipv6}/128",
                "gateway": str(attachment.gateway_v6),
                "interface": 1,
            }
        ]
        routes = [{"dst": "::/0", "gw": str(attachment.gateway_v6)}]
        if attachment.ipv4 is not None and attachment.gateway_v4 is not None:
            ips.append(
                {
                    "address": f"{attachment.ipv4}/32",
                    "gateway": str(attachment.gateway_v4),
                    "interface": 1,
                }
            )
            routes.append({"dst": "0.0.0.0/0", "gw": str(attachment.gateway_v4)})
        interfaces = [
            {"name": attachment.host_ifname, "mac": attachment.host_mac, "mtu": attachment.mtu},
            {
                "name": attachment.ifname,
                "mac": attachment.pod_mac,
                "mtu": attachment.mtu,
                "sandbox": attachment.netns,
            },
        ]
        return protocol.format_result(
            request.cni_version,
            interfaces,
            ips,
            routes,
            request.config.get("dns") or {},
            request.config.get("prevResult"),
        )


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Store trouble is transient from the runtime's point of view: code 11."""
    try:
        yield
    except (StoreError, AllocationError) as err:
        raise CniError(protocol.TRY_AGAIN_LATER, f"address store failed {what}", str(err)) from None


def _wired(step: Any) -> Any:
    """Run a wiring step, mapping its failures to CNI codes."""
    try:
        return step()
    except NetnsNotFound as err:
        raise CniError(
            protocol.UNKNOWN_CONTAINER, "container network namespace is gone", str(err)
        ) from None
    except (NetnsIsNode, NetnsInvalid) as err:
        raise CniError(protocol.INVALID_ENVIRONMENT, "invalid CNI_NETNS", str(err)) from None
    except InterfaceExists as err:
        raise CniError(
            protocol.INTERFACE_SETUP_FAILED, "interface already exists", str(err)
        ) from None
    except (WiringError, OSError) as err:
        raise CniError(
            protocol.INTERFACE_SETUP_FAILED, "could not wire the pod's interface", str(err)
        ) from None


def bind_private(path: str) -> socket.socket:
    """A listening unix socket at `path`, mode 0600 from the first moment it is reachable.

    The socket is bound inside a fresh 0700 directory next to `path`, chmod'ed, then
    renamed into place — atomic, and it replaces a stale socket left by a crashed agent.
    (Not os.umask(): that is process-wide, and the agent's other threads create files.)
    A socket that still answers belongs to a live agent and is left alone.
    """
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError as err:
            if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
        else:
            raise RuntimeError(f"another agent is serving on {path}")
        finally:
            probe.close()
    private_dir = tempfile.mkdtemp(prefix=".srv6-cni-", dir=parent)
    staged = os.path.join(private_dir, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(staged)
        os.chmod(staged, 0o600)
        listener.listen(_LISTEN_BACKLOG)
        os.rename(staged, path)
    except BaseException:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise
    finally:
        os.rmdir(private_dir)
    return listener
