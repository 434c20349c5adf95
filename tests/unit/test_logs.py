"""Logs are one event per line, whoever logs: the waker through structlog, libraries through logging."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from waker.cli import logs


@pytest.fixture(autouse=True)
def restored_logging():
    """configure() takes the root logger and structlog over for the process: give them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


def test_a_library_error_with_its_traceback_is_one_json_line(capsys):
    logs.configure(json_lines=True)
    try:
        raise ValueError("bad request line")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    structlog.get_logger("waker.test").info("own_event", key="value")
    lines = capsys.readouterr().err.splitlines()
    library, own = (json.loads(line) for line in lines)
    assert library["event"] == "Error handling request" and library["level"] == "error"
    assert library["logger"] == "aiohttp.server" and "ValueError: bad request line" in library["exception"]
    assert own["event"] == "own_event" and own["key"] == "value"


def test_library_chatter_below_warning_stays_out(capsys):
    logs.configure(json_lines=True)
    logging.getLogger("asyncio").info("noise")
    logging.getLogger("aiohttp.access").warning("kept")
    assert [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()] == ["kept"]
