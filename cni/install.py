"""Install the srv6-cni plugin where container runtimes look for plugins (`/opt/cni/bin`).

Two forms, one file name (`srv6-cni`, the conflist's `type`):

- `--executable PATH`: copy the self-contained executable (cni/freeze.py: static, the shim
  frozen in) that the image carries at `DEFAULT_EXECUTABLE`. The node needs no Python and
  no C library; this is what the DaemonSet installs.
- `--python PATH` (the default): copy the shim's modules (standard library only) into a lib
  directory and write a launcher that runs them with that interpreter, `-I -S`: isolated,
  without `site`, whose scan of site-packages and `.pth` hooks (an editable install's
  finder) costs more than everything the shim does. For a lab or a bare-metal node with
  Python >= 3.11.

Start-up is most of a CNI ADD; cni/README.md ("Latency") measures both forms.
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

from cni import protocol

SHIM_MODULES = ("__init__.py", "main.py", "protocol.py")
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_LIB_DIR = "/opt/cni/lib/srv6-cni"
DEFAULT_PYTHON = "/usr/bin/python3"
DEFAULT_EXECUTABLE = "/usr/local/libexec/srv6ctl/srv6-cni"  # where deploy/Containerfile puts it
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


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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


def plugin_problem(plugin: Path) -> str:
    """Why `plugin` is no working srv6-cni ('' when it answers VERSION, as runtimes ask first)."""
    try:
        done = subprocess.run(
            [str(plugin)],
            env={"CNI_COMMAND": "VERSION"},
            input=b'{"cniVersion": "1.0.0"}',
            capture_output=True,
            timeout=30,
            check=False,
        )
    except OSError as err:
        return f"{plugin} cannot be run: {err}"
    try:
        answer = protocol.loads(done.stdout)
    except ValueError:
        answer = None
    if done.returncode != 0 or not isinstance(answer, dict):
        stderr = done.stderr.decode(errors="replace").strip()
        return f"{plugin} VERSION exited {done.returncode}: {done.stdout!r} {stderr}"
    if answer.get("supportedVersions") != list(protocol.SUPPORTED_VERSIONS):
        return f"{plugin} supports {answer.get('supportedVersions')}, not this shim's versions"
    return ""


def install(
    bin_dir: str = DEFAULT_BIN_DIR,
    lib_dir: str = DEFAULT_LIB_DIR,
    python: str = DEFAULT_PYTHON,
    root: str = "",
    executable: str | None = None,
) -> Path:
    """Install the plugin: `executable` if given, else the launcher running `python`.

    Returns the plugin's path (below `root`).
    """
    if executable is not None:
        return _install_executable(Path(executable), bin_dir, lib_dir, root)
    _check_python(python, root)
    source = Path(__file__).resolve().parent
    package = _under(root, lib_dir) / "cni"
    package.mkdir(parents=True, exist_ok=True)
    for name in SHIM_MODULES:
        _atomic_write(package / name, (source / name).read_bytes(), 0o644)
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
    _atomic_write(launcher, LAUNCHER.format(python=python, lib_dir=lib_dir).encode(), 0o755)
    return launcher


def _install_executable(executable: Path, bin_dir: str, lib_dir: str, root: str) -> Path:
    # Run here, in the image it came with, before the runtime can exec it on the node.
    problem = plugin_problem(executable)
    if problem:
        raise SystemExit(f"refusing to install {executable}: {problem}")
    plugin = _under(root, bin_dir) / "srv6-cni"
    _atomic_write(plugin, executable.read_bytes(), 0o755)
    # A launcher's modules from an earlier install: nothing runs them any more.
    shutil.rmtree(_under(root, lib_dir) / "cni", ignore_errors=True)
    return plugin


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="srv6-cni install", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--bin-dir", default=DEFAULT_BIN_DIR, help="CNI plugin directory")
    parser.add_argument("--lib-dir", default=DEFAULT_LIB_DIR, help="where the modules go")
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--executable",
        help=f"install this self-contained srv6-cni (the image's: {DEFAULT_EXECUTABLE})",
    )
    form.add_argument(
        "--python",
        default=DEFAULT_PYTHON,
        help="install the launcher, run by this interpreter on the node (Python >= 3.11)",
    )
    parser.add_argument("--root", default="", help="write below this root (e.g. /host)")
    options = parser.parse_args(argv)
    plugin = install(
        options.bin_dir, options.lib_dir, options.python, options.root, options.executable
    )
    print(f"installed {plugin}")
    return 0


def uninstall(
    bin_dir: str = DEFAULT_BIN_DIR, lib_dir: str = DEFAULT_LIB_DIR, root: str = ""
) -> None:
    (_under(root, bin_dir) / "srv6-cni").unlink(missing_ok=True)
    shutil.rmtree(_under(root, lib_dir) / "cni", ignore_errors=True)
