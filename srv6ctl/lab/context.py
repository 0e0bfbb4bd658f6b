"""What the parts of a lab's life cycle share while they change it.

`Lab` (build.py) owns the state and hands one of these to the parts it delegates to
(node_processes, workload, scaling, repair). They record every change through `save`,
which takes `Lab`'s lock: build steps run in threads, and the state file has one writer
at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from srv6ctl.lab.progress import Steps
from srv6ctl.lab.state import LabPaths, LabState


@dataclass(frozen=True)
class LabContext:
    paths: LabPaths
    state: LabState
    steps: Steps
    save: Callable[[], None]
