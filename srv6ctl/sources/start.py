"""Start the source an agent reads the cluster from, and return once it has the whole
cluster: the first reconcile must see every object, or it would delete what a restarted
agent's dataplane rightly holds."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from srv6ctl.sources import EventSink
from srv6ctl.sources.lab import LabSource

log = logging.getLogger("srv6ctl.agent")


class RunningSource(Protocol):
    def stop(self) -> None: ...


def start_source(
    sink: EventSink, lab_dir: str | None, kubeconfig: str | None, stopping: threading.Event
) -> RunningSource:
    """The lab's directory when `lab_dir` is given, else the Kubernetes API (`kubeconfig`,
    or the in-cluster config); returns early only when `stopping` is set."""
    if lab_dir is not None:
        lab = LabSource(lab_dir)
        for event in lab.poll():
            sink(event)
        lab.start(sink)
        return lab
    # The Kubernetes client is a fifth of an agent's start-up: the lab's agents skip it.
    from srv6ctl.sources.kubernetes import KubernetesSource

    source = KubernetesSource(sink, kubeconfig=kubeconfig)
    source.start()
    while not stopping.is_set() and not source.wait_synced(timeout=5.0):
        log.info("waiting for the first list of every kind from the API server")
    return source
