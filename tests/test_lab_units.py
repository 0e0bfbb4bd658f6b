"""The lab's pure parts and its process bookkeeping: no namespaces, no root needed."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srv6ctl.lab import objects, processes, vpp
from srv6ctl.lab.build import Lab
from srv6ctl.lab.netns import LabError
from srv6ctl.lab.progress import Steps, console
from srv6ctl.lab.requirements import check_requirements
from srv6ctl.lab.state import (
    LabOptions,
    LabPaths,
    LabState,
    NodeRecord,
    PodRecord,
    ServiceRecord,
    load_state,
    save_state,
)
from srv6ctl.sources.lab import LabSource
from srv6ctl.state import ClusterState, ContainerPort, Upsert
from srv6ctl.verify.cli import DEFAULT_GROUPS
from srv6ctl.verify.run import GROUPS


def two_nodes(tmp_path: Path, dual_stack: bool = True, pods_per_node: int = 1) -> LabState:
    """A lab state with nodes n1 and n2 and nothing else yet."""
    state = LabState(
        state_dir=str(tmp_path),
        options=LabOptions(nodes=2, pods_per_node=pods_per_node, dual_stack=dual_stack),
        underlay_netns="t-ul",
        probe_netns="t-probe",
    )
    for i in (1, 2):
        state.nodes.append(
            NodeRecord(
                name=f"n{i}",
                netns=f"t-n{i}",
                uplink=f"n{i}",
                internal_ipv6=f"fd00:ff::{i}",
                internal_ipv4=f"192.0.2.{i}" if dual_stack else None,
                cni_socket=f"{tmp_path}/n{i}/cni.sock",
                api_socket=f"{tmp_path}/n{i}/agent.sock",
            )
        )
    return state


def small_state(tmp_path: Path, dual_stack: bool = True) -> LabState:
    state = two_nodes(tmp_path, dual_stack)
    state.pods += [
        PodRecord(
            name="client-1",
            node="n1",
            netns="t-client-1",
            uid="uid-c1",
            container_id="c1",
            role="client",
            ipv6="fd00:10:0:1::2",
            ipv4="10.128.1.2" if dual_stack else None,
        ),
        PodRecord(
            name="web-1",
            node="n2",
            netns="t-web-1",
            uid="uid-w1",
            container_id="w1",
            role="backend",
            service="web",
            ipv6="fd00:10:0:2::2",
            ipv4="10.128.2.2" if dual_stack else None,
        ),
    ]
    state.services.append(
        ServiceRecord(
            name="web",
            uid="uid-web",
            cluster_ipv6="fd00:96::10",
            cluster_ipv4="10.96.0.10" if dual_stack else None,
        )
    )
    return state


def test_lab_objects_read_back_through_the_agents_source(tmp_path: Path) -> None:
    """What the lab writes is what an agent reads: Kubernetes shapes, through LabSource."""
    state = small_state(tmp_path)
    directory = tmp_path / "objects"
    directory.mkdir()
    (directory / "nodes.yaml").write_text(objects.node_file(state))
    for pod in state.pods:
        (directory / f"{pod.name}.yaml").write_text(objects.dump([objects.pod_object(pod)]))
    (directory / "web.yaml").write_text(objects.service_file(state, state.services[0]))
    cluster = ClusterState()
    events = LabSource(directory).poll()
    assert {type(e) for e in events} == {Upsert}
    for event in events:
        cluster.apply(event)
    node = cluster.node("n2")
    assert node is not None
    assert node.internal_ipv6 == ipaddress.IPv6Address("fd00:ff::2")
    assert node.internal_ipv4 == ipaddress.IPv4Address("192.0.2.2")
    service = cluster.service("default", "web")
    assert service is not None and service.uid == "uid-web"
    assert service.cluster_ip_v6 == ipaddress.IPv6Address("fd00:96::10")
    assert {(p.port, p.target_port, p.protocol) for p in service.ports} == {
        (80, "http", "TCP"),
        (80, "http-udp", "UDP"),
        (8081, 8081, "TCP"),
        (8081, 8081, "UDP"),
    }
    web = cluster.pod("default", "web-1")
    assert web is not None and web.uid == "uid-w1" and web.node_name == "n2"
    assert {ContainerPort(8080, "TCP", "http"), ContainerPort(8080, "UDP", "http-udp")} <= set(
        web.container_ports
    )
    slices = cluster.slices_of_service("default", "web")
    assert sorted(s.address_type for s in slices) == ["IPv4", "IPv6"]
    for eps in slices:
        (endpoint,) = eps.endpoints
        assert endpoint.ready and endpoint.serving and not endpoint.terminating
        assert endpoint.node_name == "n2"
    kinds = {type(e.obj).__name__ for e in events if isinstance(e, Upsert)}
    assert kinds == {"Node", "Pod", "Service", "EndpointSlice"}


def test_service_without_backends_has_empty_slices(tmp_path: Path) -> None:
    state = small_state(tmp_path, dual_stack=False)
    empty = ServiceRecord(name="empty", uid="u", cluster_ipv6="fd00:96::11", with_backends=False)
    documents = objects.service_file(state, empty)
    assert "endpoints: []" in documents
    assert "IPv4" not in documents  # single-stack: one slice, one family


def test_a_service_outside_the_cluster_is_made_by_hand_and_reads_back(tmp_path: Path) -> None:
    """No selector (or the EndpointSlice controller would own its slices), one slice per
    family naming the probe's address alone: no node, no pod, ready."""
    state = small_state(tmp_path)
    outside = ServiceRecord(
        name="outside",
        uid="uid-outside",
        cluster_ipv6="fd00:96::14",
        cluster_ipv4="10.96.0.14",
        with_backends=False,
        outside_endpoints=["fd00:ff::ffff", "192.0.2.254"],
    )
    directory = tmp_path / "objects"
    directory.mkdir()
    text = objects.service_file(state, outside)
    assert "selector" not in text
    (directory / "outside.yaml").write_text(text)
    cluster = ClusterState()
    for event in LabSource(directory).poll():
        cluster.apply(event)
    service = cluster.service("default", "outside")
    assert service is not None
    slices = {s.address_type: s for s in cluster.slices_of_service("default", "outside")}
    assert {t: [e.addresses for e in s.endpoints] for t, s in slices.items()} == {
        "IPv6": [(ipaddress.ip_address("fd00:ff::ffff"),)],
        "IPv4": [(ipaddress.ip_address("192.0.2.254"),)],
    }
    for eps in slices.values():
        (endpoint,) = eps.endpoints
        assert endpoint.ready and endpoint.node_name is None and endpoint.target is None
        assert {p.name for p in eps.ports} >= {"http"}


def test_a_load_balancer_service_shares_its_pods_and_reads_back_as_one(tmp_path: Path) -> None:
    state = small_state(tmp_path)
    local = ServiceRecord(
        name="web-local",
        uid="uid-local",
        cluster_ipv6="fd00:96::12",
        selects="web",
        type="LoadBalancer",
        load_balancer_ips=["fd00:ee::11", "198.51.100.11"],
        external_ips=["fd00:ee::21"],
        external_traffic_policy="Local",
        health_check_node_port=32100,
    )
    state.services.append(local)
    assert [p.name for p in state.backends("web-local")] == ["web-1"]
    assert [s.name for s in state.services_of("web")] == ["web", "web-local"]
    assert local.external_vips(6) == ["fd00:ee::11", "fd00:ee::21"]
    assert local.external_vips(4) == ["198.51.100.11"]
    directory = tmp_path / "objects"
    directory.mkdir()
    (directory / "local.yaml").write_text(objects.service_file(state, local))
    cluster = ClusterState()
    for event in LabSource(directory).poll():
        cluster.apply(event)
    service = cluster.service("default", "web-local")
    assert service is not None
    assert service.type == "LoadBalancer" and service.external_traffic_policy == "Local"
    assert service.health_check_node_port == 32100
    assert [str(a) for a in service.external_vips(6)] == ["fd00:ee::21", "fd00:ee::11"]
    (eps,) = [
        s for s in cluster.slices_of_service("default", "web-local") if s.address_type == "IPv6"
    ]
    assert [e.target.name for e in eps.endpoints if e.target] == ["web-1"]


def test_state_round_trip_and_look_ups(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "lab")
    state = small_state(tmp_path)
    save_state(paths, state)
    again = load_state(paths)
    assert again == state
    assert again.pod("default/web-1").name == "web-1"
    assert again.pod("web-1").service == "web"
    assert [p.name for p in again.backends("web")] == ["web-1"]
    # Pods first: their namespaces hang off the nodes'; the underlay goes last.
    assert again.namespaces() == ["t-client-1", "t-web-1", "t-n1", "t-n2", "t-probe", "t-ul"]
    with pytest.raises(KeyError, match="no pod 'web-9'"):
        again.pod("web-9")
    assert not list(tmp_path.glob("lab/.*tmp"))  # the atomic write left no temporary file


def test_lab_vpps_load_abf_and_agents_get_the_binarys_own_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NodePorts on VPP are ABF policies: the lab's VPPs load the plugin, and the agents
    speak the API definitions the binary ships (../shared/vpp-api has no abf.api.json)."""
    node = vpp.VppNode(tmp_path / "n1" / "vpp", shm_prefix="s6lab-n1")
    config = vpp.startup_config(node, plugins=None)
    assert "plugin abf_plugin.so { enable }" in config
    assert "plugin acl_plugin.so { enable }" in config  # ABF matches with ACLs

    install = tmp_path / "install"
    (install / "bin").mkdir(parents=True)
    binary = install / "bin" / "vpp"
    binary.write_text("")
    monkeypatch.delenv("SRV6CTL_VPP_API_DIR", raising=False)
    assert vpp.own_api_dir(str(binary)) is None  # ships none: the agent's own search
    api = install / "share" / "vpp" / "api" / "plugins"
    api.mkdir(parents=True)
    (api / "abf.api.json").write_text("{}")
    assert vpp.own_api_dir(str(binary)) == str(install / "share" / "vpp" / "api")
    monkeypatch.setenv("SRV6CTL_VPP_API_DIR", str(tmp_path))  # an explicit choice wins
    assert vpp.own_api_dir(str(binary)) is None


def test_requirements_refuse_vpp_without_a_vpp_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("SRV6CTL_VPP_BIN", raising=False)  # it names a VPP, too
    with pytest.raises(LabError, match="no `vpp` binary on PATH"):
        check_requirements(LabOptions(dataplane="vpp"))


@pytest.mark.parametrize(
    "options, message",
    [
        (LabOptions(nodes=0), "--nodes 0"),
        (LabOptions(nodes=1, pods_per_node=1), "at least two pods"),
        (LabOptions(prefix="bad prefix!"), "--prefix"),
    ],
)
def test_requirements_refuse_bad_shapes(options: LabOptions, message: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the shape is checked after the root check")
    with pytest.raises(LabError, match=message):
        check_requirements(options)


def test_processes_are_recorded_found_by_marker_and_stopped(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    record = processes.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log", lab=lab
    )
    try:
        assert processes.alive(record)
        found = list(processes.lab_processes(lab))
        assert [(p.pid, p.start_time) for p in found] == [(record.pid, record.start_time)]
        assert list(processes.lab_processes(tmp_path / "other")) == []
        # A pid with another start time is someone else's process: never signalled.
        stranger = record.model_copy(update={"start_time": record.start_time + 1})
        assert not processes.alive(stranger)
        assert processes.stop([stranger]) == []
        assert processes.alive(record)
        assert processes.stop([record], timeout=5) == [record.pid]
        assert not processes.alive(record)
    finally:
        if processes.alive(record):
            os.kill(record.pid, signal.SIGKILL)


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    record = processes.spawn([sys.executable, "-c", code], tmp_path / "log", lab=tmp_path)
    try:
        time.sleep(0.3)  # let it install its handler
        started = time.monotonic()
        processes.stop([record], timeout=0.5)
        assert not processes.alive(record)
        assert time.monotonic() - started < 3
    finally:
        if processes.alive(record):
            os.kill(record.pid, signal.SIGKILL)


def test_down_without_a_lab_is_a_no_op(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "none", Steps(console(), quiet=True))
    report = lab.down(prefix="s6nolab")
    assert report.nothing
    untouched = tmp_path / "mine"
    untouched.mkdir()
    (untouched / "keep").write_text("x")
    Lab(untouched, Steps(console(), quiet=True)).down()
    assert (untouched / "keep").exists()  # no marker, no state: not the lab's to delete


def test_the_cli_registers_without_heavy_imports() -> None:
    code = (
        "import argparse, sys\n"
        "from srv6ctl.lab.cli import register as lab\n"
        "from srv6ctl.verify.cli import register as verify\n"
        "from srv6ctl.trace import register as trace\n"
        "p = argparse.ArgumentParser(); c = p.add_subparsers()\n"
        "lab(c); verify(c); trace(c)\n"
        "heavy = [m for m in ('pyroute2', 'scapy', 'rich', 'pydantic') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_verify_runs_every_group_by_default() -> None:
    assert DEFAULT_GROUPS == GROUPS
