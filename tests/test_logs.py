"""Structured logs: one JSON object per line, with the pod/service/SID a line concerns."""

from __future__ import annotations

import json
import logging

from srv6ctl.logs import JsonFormatter


def test_json_lines_carry_context_fields() -> None:
    record = logging.LogRecord(
        "srv6ctl.agent",
        logging.INFO,
        __file__,
        1,
        "pod %s: service addresses +%s",
        ("default/web", ["fd00:96::10"]),
        None,
    )
    record.pod = "default/web"
    record.service = "fd00:96::10"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "pod default/web: service addresses +['fd00:96::10']"
    assert (line["level"], line["logger"]) == ("info", "srv6ctl.agent")
    assert (line["pod"], line["service"]) == ("default/web", "fd00:96::10")
    assert "sid" not in line and line["ts"].endswith("Z")
