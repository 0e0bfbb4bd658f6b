"""The `srv6ctl` entry point as a user runs it: the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRV6CTL = shutil.which("srv6ctl", path=str(Path(sys.executable).parent)) or "srv6ctl"
SAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "base" / "srv6ctl.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SRV6CTL, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "config" in result.stdout and "lab" in result.stdout


def test_config_check_prints_the_resolved_plan_of_the_shipped_config() -> None:
    result = run("config", "check", str(SAMPLE), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["node 1 locator"] == "fcbb:bb00:1::/48"
    assert summary["stack"] == "dual-stack"
    assert summary["store"] == "Kubernetes API, ConfigMaps in namespace srv6ctl"
    table = run("config", "check", str(SAMPLE))
    assert "fcbb:bb00:1::1 / fcbb:bb00:1::6" in table.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "addressPlan:\n  podCIDRv6: fd00:10::/48\n  locatorLength: 32\n",
            "addressPlan.locatorLength /32",
        ),
        ("addressPlan:\n  podCIDRv6: fd00:10::1/48\n", "host bits set"),
        ("store:\n  type: embedded\n", "addressPlan: is required"),
        ("addressPlan: [unclosed\n", "not valid YAML"),
    ],
)
def test_config_check_refuses_a_bad_file_with_one_line_naming_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run("config", "check", str(path))
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_of_a_missing_file() -> None:
    result = run("config", "check", "/nonexistent/srv6ctl.yaml")
    assert result.returncode == 1 and "No such file" in result.stderr


def test_lab_demo_allocates_and_survives_a_restart() -> None:
    result = run("lab", "demo")
    assert result.returncode == 0, result.stderr
    assert "every node ID and pod address unchanged: True" in result.stdout
    assert "fcbb:bb00:3::/48" in result.stdout
    assert "ctr-leaked/eth0" in result.stdout


def test_a_bad_nodeport_addresses_stops_the_agent_with_one_line() -> None:
    result = run(
        "agent", "--node-name", "n", "--config", str(SAMPLE), "--nodeport-addresses", "::/0,lan"
    )
    assert result.returncode == 2
    assert "--nodeport-addresses: 'lan' is not a prefix" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_vpp_host_interface_stops_the_agent_with_one_line() -> None:
    result = run(
        "agent", "--node-name", "n", "--config", str(SAMPLE), "--vpp-host-interface", "x" * 15
    )
    assert result.returncode == 2
    assert "--vpp-host-interface: host interface 'xxxxxxxxxxxxxxx': 1 to 14" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_health_check_address_stops_the_agent_with_one_line() -> None:
    result = run(
        "agent", "--node-name", "n", "--config", str(SAMPLE), "--health-check-address", "nodes"
    )
    assert result.returncode == 2
    assert "--health-check-address: 'nodes' is not an IP address or 'off'" in result.stderr
    assert "Traceback" not in result.stderr
