"""Build `srv6-cni` as one static executable that needs no Python (and no C library) on the node.

Nodes may have no Python (Flatcar, Talos, Bottlerocket) or an old one (Ubuntu 22.04: 3.10,
RHEL 9: 3.9), and a Talos node's libc is musl, not glibc; the runtime execs whatever is in
`/opt/cni/bin`. So the executable links CPython's static library (`libpython3.X.a`) and the
C library with `-static`, and carries the bytecode of every module the shim imports as
frozen modules (`PyImport_FrozenModules`, CPython's public embedding API, the mechanism of
its own Tools/freeze). It reads no file at start-up and starts faster than the launcher;
PyInstaller, Nuitka and cx_Freeze bundles were measured slower than the launcher itself
and still need the node's glibc (cni/README.md, "The self-contained executable").

Run it with the interpreter whose static library is linked (the bytecode must match it),
from the repository root: `/usr/bin/python3 -m cni.freeze --output build/cni/srv6-cni`, or
`scripts/build-cni.sh`. Debian's `libpython3-dev` has `_socket` built into the library;
a Python whose `_socket` is a shared module (pyenv, python.org builds) is refused.
"""

from __future__ import annotations

import argparse
import ast
import json
import marshal
import os
import shlex
import struct
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from cni.install import SHIM_MODULES, plugin_problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAIN_C = Path(__file__).with_name("freeze_main.c")
TABLE = "srv6_cni_frozen"  # the symbol freeze_main.c points PyImport_FrozenModules at
# C accelerators the shim can do without: json falls back to its pure-Python scanner and
# encoder, which a CNI config (a few hundred bytes) does not notice.
OPTIONAL_EXTENSIONS = frozenset({"_json"})

# Imports what the shim imports, the way the executable runs (UTF-8 mode, no site), and
# prints where each loaded module came from: "built-in", "frozen" or a file.
_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    __import__(name)
origins = {name: getattr(module.__spec__, "origin", None) for name, module in sys.modules.items()}
print(json.dumps(origins))
"""

_ELF64_HEADER_SIZE = 64  # Elf64_Ehdr (offsets below are the System V gABI's)
_PT_DYNAMIC, _PT_INTERP = 2, 3


class BuildError(Exception):
    """The executable cannot be built with this interpreter or toolchain (the message says why)."""


def shim_imports() -> list[str]:
    """Every module the shim's files import, at module level or in a function (`_socket` is
    imported only when a request goes to the agent), except the installer's and type hints'."""
    names = {"cni.main"}
    for filename in SHIM_MODULES:
        tree = ast.parse(Path(__file__).with_name(filename).read_text(), filename)
        hints = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ]
        for_hints_only = {id(inner) for node in hints for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in for_hints_only:
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    # `srv6-cni install` runs from the image's Python; the executable is the plugin only.
    names.discard("cni.install")
    return sorted(names)


def shim_modules(python: str = sys.executable) -> dict[str, Path]:
    """Module name -> source file of every module the shim loads that libpython lacks."""
    done = subprocess.run(
        [python, "-I", "-S", "-X", "utf8", "-c", _PROBE, str(PROJECT_ROOT), *shim_imports()],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"importing the shim with {python} failed:\n{done.stderr}")
    sources: dict[str, Path] = {}
    for name, origin in sorted(json.loads(done.stdout).items()):
        if origin in ("built-in", "frozen") or name == "__main__":
            continue  # compiled into libpython (or the probe itself): nothing to carry
        if origin is None or not origin.endswith(".py"):
            if name in OPTIONAL_EXTENSIONS:
                continue
            raise BuildError(
                f"the shim imports {name} from {origin}, a shared module, which a static "
                f"executable cannot load: use a Python whose static library has {name} "
                "built in (Debian's python3 with libpython3-dev)"
            )
        sources[name] = Path(origin)
    return sources


def frozen_table(sources: dict[str, Path]) -> str:
    """C source of the `_frozen` table: marshalled bytecode of each module, by name."""
    lines = ["#include <Python.h>", ""]
    entries = []
    for index, (name, path) in enumerate(sorted(sources.items())):
        # Named like libpython's own frozen modules in tracebacks; no path of the build machine.
        code = compile(path.read_bytes(), f"<frozen {name}>", "exec", dont_inherit=True)
        data = marshal.dumps(code)
        lines.append(f"/* {name} */")
        lines.append(f"static const unsigned char m{index}[{len(data)}] = {{")
        for start in range(0, len(data), 24):
            lines.append("    " + ",".join(str(byte) for byte in data[start : start + 24]) + ",")
        lines.append("};")
        is_package = int(path.name == "__init__.py")
        entries.append(f'    {{"{name}", m{index}, (int)sizeof(m{index}), {is_package}, NULL}},')
    lines.append(f"const struct _frozen {TABLE}[] = {{")
    lines.extend(entries)
    lines.append("    {NULL, NULL, 0, 0, NULL},")
    lines.append("};")
    return "\n".join(lines) + "\n"


def static_library() -> Path:
    """This interpreter's `libpython3.X.a`, which the executable links."""
    library = Path(str(sysconfig.get_config_var("LIBPL")), str(sysconfig.get_config_var("LIBRARY")))
    if not library.name.endswith(".a") or not library.exists():
        raise BuildError(
            f"{sys.executable} has no static library at {library}: "
            "apt-get install libpython3-dev (or build with that Debian python3)"
        )
    return library


def link_command(sources: list[Path], output: Path) -> list[str]:
    """The compiler call: everything static, stripped."""
    config = sysconfig.get_config_var
    compiler = shlex.split(str(config("CC") or "cc"))
    # The libraries libpython's built-in modules need (pyexpat: -lexpat, zlib: -lz), dl, m.
    libraries = shlex.split(
        " ".join(str(config(name) or "") for name in ("MODLIBS", "LIBS", "SYSLIBS"))
    )
    return [
        *compiler,
        "-O2",
        "-static",
        "-s",
        f"-I{sysconfig.get_paths()['include']}",
        "-o",
        str(output),
        *map(str, sources),
        str(static_library()),
        *libraries,
        "-lpthread",
    ]


def elf_problems(path: Path) -> list[str]:
    """Why `path` would need anything from the node but the kernel ([] when it would not)."""
    with path.open("rb") as elf:
        header = elf.read(_ELF64_HEADER_SIZE)
        if len(header) < _ELF64_HEADER_SIZE or header[:4] != b"\x7fELF":
            return [f"{path} is not an ELF executable"]
        if header[4:6] != b"\x02\x01":  # EI_CLASS 64-bit, EI_DATA little-endian
            return [f"{path} is not a little-endian 64-bit ELF file"]
        (table,) = struct.unpack_from("<Q", header, 0x20)  # e_phoff
        entry_size, count = struct.unpack_from("<HH", header, 0x36)  # e_phentsize, e_phnum
        problems = []
        for index in range(count):
            elf.seek(table + index * entry_size)
            (kind,) = struct.unpack("<I", elf.read(4))  # p_type
            if kind == _PT_INTERP:
                problems.append("it names a dynamic loader (PT_INTERP): the node's libc is needed")
            elif kind == _PT_DYNAMIC:
                problems.append(
                    "it has a dynamic section (PT_DYNAMIC): shared libraries are needed"
                )
        return problems


def build(output: Path) -> Path:
    """Build, check and atomically put the executable at `output`; returns `output`."""
    library = static_library()
    sources = shim_modules()
    output.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the output and renamed into place: never half an executable there.
    with tempfile.TemporaryDirectory(prefix=".srv6-cni-freeze-", dir=output.parent) as work:
        table = Path(work, "frozen.c")
        table.write_text(frozen_table(sources))
        staged = Path(work, "srv6-cni")
        done = subprocess.run(
            link_command([MAIN_C, table], staged), capture_output=True, text=True, check=False
        )
        # Linking glibc statically warns about getaddrinfo, getpwnam, dlopen...: NSS and
        # shared modules, which the shim never uses (it connects a unix socket, imports
        # frozen modules only). The warnings are therefore not shown; errors are.
        if done.returncode != 0:
            raise BuildError(f"linking against {library} failed:\n{done.stderr}")
        problems = elf_problems(staged)
        if problems:
            raise BuildError(f"the executable is not self-contained: {'; '.join(problems)}")
        problem = plugin_problem(staged)
        if problem:
            raise BuildError(problem)
        os.replace(staged, output)
    return output


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cni.freeze", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "build" / "cni" / "srv6-cni")
    options = parser.parse_args(argv)
    try:
        output = build(options.output)
    except BuildError as err:
        print(f"cni.freeze: {err}", file=sys.stderr)
        return 1
    print(f"built {output} ({output.stat().st_size // 1024} KiB, static)")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
