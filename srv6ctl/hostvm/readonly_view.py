"""Exec a program in a mount namespace of its own where a directory is the host's / read-only.

`python -m srv6ctl.hostvm.readonly_view VIEW PROGRAM ARGS...`: virtiofsd serves the
host's root from VIEW and so cannot write to the host, even if the guest remounts its
share read-write (qemu 7.2's C virtiofsd has no read-only mode). One mount_setattr(2)
(Linux >= 5.12) makes the whole tree read-only at once: util-linux 2.38's
`mount -o ro=recursive` silently leaves submounts writable, and remounting them one by one
races with mounts that come and go (`ip netns` on a busy host).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
USAGE = "usage: python -m srv6ctl.hostvm.readonly_view VIEW PROGRAM [ARGS...]"
SYS_MOUNT_SETATTR = 442  # one number on every architecture (new syscalls share a table)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def enter_readonly_view(view: str) -> None:
    """Move this process to a new mount namespace where `view` is / made read-only."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Private first: the binds and attributes below must not propagate back to the host.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    _check(libc.mount(b"/", view.encode(), None, MS_BIND | MS_REC, None), f"binding / on {view}")
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    result = libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(view.encode()),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, f"mount_setattr(read-only, recursive) on {view}")


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    view, program = argv[0], list(argv[1:])
    try:
        enter_readonly_view(view)
    except OSError as error:
        print(f"srv6ctl-vm: {error.strerror}", file=sys.stderr)
        return 1
    os.execv(program[0], program)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
