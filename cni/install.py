"""Install the srv6-cni shim where container runtimes look for plugins (`/opt/cni/bin`).

`srv6-cni install` copies the shim's modules (standard library only) into a lib
directory and writes a launcher that runs them with `python3 -I -S`: isolated, without
`site`. Start-up is most of a CNI ADD, and `site` (scanning site-packages, `.pth` hooks
such as an editable install's finder) costs more than everything the shim does; measured
here, `python -c pass` takes several times as long as `python -I -S -c pass`.

With `--root` (a DaemonSet's init container writing to the host's disk under `/host`),
files go below the root while the launcher names the paths as the host sees them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHIM_MODULES = ("__init__.py", "main.py", "protocol.py")
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_LIB_DIR = "/opt/cni/lib/srv6-cni"
DEFAULT_PYTHON = "/usr/bin/python3"
MIN_PYTHON = (3, 11)

LAUNCHER = '''#!{python} -IS
"""srv6-cni, the srv6ctl CNI plugin (written by `srv6-cni install`; do not edit)."""
import sys

sys.path.insert(0, {lib_dir!r})
from cni.main import main

sys.exit(main())
'''


def _under(root: str, path: str) -> Path:
    return Path(root, path.lstrip("/")) if root else Path(path)


def _atomic_write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(staged, mode)
        os.replace(staged, path)  # a runtime exec'ing the old file never sees half a file
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def _check_python(python: str, root: str) -> None:
    # Run the interpreter the launcher will use (through the root, if it is reachable).
    candidate = _under(root, python)
    if not candidate.exists():
        if root:
            return  # not reachable from here (another mount namespace): trust the operator
        raise SystemExit(f"{python} does not exist: pass --python")
    wanted = ".".join(map(str, MIN_PYTHON))
    check = f"import sys; sys.exit(sys.version_info < {MIN_PYTHON!r})"
    if subprocess.run([str(candidate), "-IS", "-c", check], check=False).returncode != 0:
        raise SystemExit(f"{python} is older than Python {wanted}, which srv6-cni needs")


def install(
    bin_dir: str = DEFAULT_BIN_DIR,
    lib_dir: str = DEFAULT_LIB_DIR,
    python: str = DEFAULT_PYTHON,
    root: str = "",
) -> Path:
    """Install the shim and its launcher; returns the launcher's path (below `root`)."""
    _check_python(python, root)
    source = Path(__file__).resolve().parent
    package = _under(root, lib_dir) / "cni"
    package.mkdir(parents=True, exist_ok=True)
    for name in SHIM_MODULES:
        _atomic_write(package / name, (source / name).read_text(), 0o644)
    # An upgrade drops what an older shim had (fastjson.py until issue #15): nothing imports
    # it, but a stale module beside the launcher would mislead whoever reads the node.
    for stale in package.glob("*.py"):
        if stale.name not in SHIM_MODULES:
            stale.unlink()
    # Byte-compile now, with the node's interpreter when we can run it: the runtime's
    # first ADD should not pay for compiling, and the directory may be read-only later.
    node_python = _under(root, python)
    compiler = str(node_python) if not root and node_python.exists() else sys.executable
    subprocess.run([compiler, "-IS", "-m", "compileall", "-q", str(package)], check=True)
    launcher = _under(root, bin_dir) / "srv6-cni"
    _atomic_write(launcher, LAUNCHER.format(python=python, lib_dir=lib_dir), 0o755)
    return launcher


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="srv6-cni install", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--bin-dir", default=DEFAULT_BIN_DIR, help="CNI plugin directory")
    parser.add_argument("--lib-dir", default=DEFAULT_LIB_DIR, help="where the modules go")
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="interpreter on the node")
    parser.add_argument("--root", default="", help="write below this root (e.g. /host)")
    options = parser.parse_args(argv)
    launcher = install(options.bin_dir, options.lib_dir, options.python, options.root)
    print(f"installed {launcher}")
    return 0


def uninstall(
    bin_dir: str = DEFAULT_BIN_DIR, lib_dir: str = DEFAULT_LIB_DIR, root: str = ""
) -> None:
    (_under(root, bin_dir) / "srv6-cni").unlink(missing_ok=True)
    shutil.rmtree(_under(root, lib_dir) / "cni", ignore_errors=True)
