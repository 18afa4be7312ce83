"""Logs: JSON lines off a terminal, readable lines on one, context bound once."""

from __future__ import annotations

import io
import json

from ingestd.logging import configure_logging, get_logger


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    get_logger(tenant="lincoln-high", set_id="01J").info("set.rejected", reason="not_utf8")
    get_logger().debug("hidden")
    record = json.loads(out.getvalue().strip())
    assert record["event"] == "set.rejected"
    assert record["tenant"] == "lincoln-high" and record["set_id"] == "01J"
    assert record["reason"] == "not_utf8" and record["level"] == "info"
    assert record["timestamp"].endswith("Z")
    assert len(out.getvalue().strip().splitlines()) == 1


def test_console_on_a_terminal() -> None:
    out = _Tty()
    configure_logging("auto", "debug", stream=out)
    get_logger(tenant="x").debug("sftp.login", method="password")
    line = out.getvalue()
    assert "sftp.login" in line and "tenant=x" in line and "method=password" in line
    assert not line.lstrip().startswith("{")


def test_forced_json_on_a_terminal() -> None:
    out = _Tty()
    configure_logging("json", "info", stream=out)
    get_logger().warning("tenant.stale", hours=40)
    assert json.loads(out.getvalue())["hours"] == 40
