"""Sources: where cluster objects come from — the Kubernetes API, or a lab directory.

A source turns Kubernetes JSON into `srv6ctl.state` objects (with the one shared
converter, `convert`) and hands `SourceEvent`s (`Upsert`, `Delete`, `Replace`) to a
sink, typically `queue.Queue.put` feeding the single consumer that applies them to a
`ClusterState`. Sources never talk to render, the store or a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from srv6ctl.state import Delete, Replace, SourceEvent, Upsert

EventSink: TypeAlias = Callable[[SourceEvent], None]

__all__ = ["Delete", "EventSink", "Replace", "SourceEvent", "Upsert"]
