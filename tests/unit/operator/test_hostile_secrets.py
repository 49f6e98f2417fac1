"""Hostile input, class 6 ("secrets"): every error path redacts, through the one helper
(`store.redact_secrets`): validation messages that echo what the user wrote, pydantic's
`input_value`, URLs whose password holds an unencoded `@`, the controller's InvalidSpec status
and its events, the CLI's error lines, and log records at every level (DEBUG included).

The controller side runs the real Reconciler against the in-memory FakeCluster of
test_reconcile.py and a real SQLite store; the CLI runs through typer's CliRunner.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator import store
from orchestrator.cli import app
from orchestrator.operator.reconcile import Reconciler
from tests.unit.operator.test_reconcile import NS, SPEC, FakeCluster

SECRET = "hunter2-s3cret"
# Passwords as users write them, unencoded `@` and `/` included.
URLS = [
    pytest.param(f"postgresql://ladder:{SECRET}@db.example/ladder", id="plain"),
    pytest.param(f"postgresql://ladder:p@ss{SECRET}@db.example:5432/ladder", id="at-sign"),
    pytest.param(f"postgresql://ladder:{SECRET}@@127.0.0.1/x", id="two-at-signs"),
    pytest.param(f"https://user:a/b@{SECRET}@models.example/m", id="slash-and-at"),
    pytest.param(f"postgresql+psycopg://db/ladder?user=u&password=p@{SECRET}", id="query"),
]


@pytest.fixture
def sessions(tmp_path: Path) -> Any:
    return store.open_store(f"sqlite:///{tmp_path / 'ladder.db'}")


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("around", ["{}", "cannot connect to {} (refused)", "'{}'",
                                    "url={}, retrying", "\"{}\"; next"])
def test_free_text_never_keeps_a_password(url: str, around: str) -> None:
    text = around.format(url)
    redacted = store.redact_secrets(text)
    assert SECRET not in redacted and "***" in redacted, redacted


@pytest.mark.parametrize("url", URLS)
def test_store_urls_never_keep_a_password(url: str) -> None:
    redacted = store.redact_url(url)
    assert SECRET not in redacted and "***" in redacted, redacted


def test_what_is_not_a_password_is_kept() -> None:
    text = "sqlite:///runs/a:b@c.db; mail me at x@y.org; ratio 1:2; http://h/a:b"
    assert store.redact_secrets(text) == text


def _refused(cluster: FakeCluster, sessions: Any, spec: dict[str, Any]) -> dict[str, str]:
    cluster.add_sweep("qs", spec)
    result = Reconciler(cluster, sessions).reconcile(NS, "qs")
    assert result is not None and result.invalid, result
    status = cluster.sweeps[(NS, "qs")]["status"]
    assert status["reason"] == "InvalidSpec"
    return {"status": json.dumps(status), "events": json.dumps(cluster.events),
            "invalid": result.invalid}


@pytest.mark.parametrize("url", URLS)
def test_invalid_spec_status_and_events_quote_no_password(
    sessions: Any, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    """A spec refused for a value that is a URL with a password: the reason names the field
    and quotes the value redacted, in the status, its conditions and the event."""
    caplog.set_level(logging.DEBUG)
    said = _refused(FakeCluster(), sessions, {**SPEC, "ladder": [url, url]})
    assert "spec.ladder: " in said["invalid"] and "appears twice" in said["invalid"]
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for where, text in {**said, "logs": logs}.items():
        assert SECRET not in text, f"the password leaked into the {where}: {text}"


@pytest.mark.parametrize("execution", [
    pytest.param({"env": f"DB_URL=postgresql://u:{SECRET}@db/x"}, id="env-not-a-list"),
    pytest.param({"env": [f"TOKEN={SECRET}"]}, id="env-item-not-a-mapping"),
    pytest.param({"sharedMemory": {"token": SECRET}}, id="wrong-type"),
    pytest.param({"capacity": {"gpus": SECRET}}, id="not-an-integer"),
])
def test_execution_errors_never_echo_the_input(sessions: Any, execution: dict[str, Any]) -> None:
    """pydantic's `input_value` (what str(ValidationError) prints) never reaches a status."""
    said = _refused(FakeCluster(), sessions, {**SPEC, "execution": execution})
    assert "spec.execution." in said["invalid"], said["invalid"]
    assert "input_value" not in said["status"]
    for where, text in said.items():
        assert SECRET not in text, f"the input leaked into the {where}: {text}"


@pytest.mark.parametrize("url", URLS)
def test_ladder_validate_quotes_no_password(tmp_path: Path, url: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "ladder": [url, url]}), encoding="utf-8")
    out = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})
    assert out.exit_code == 1 and "ladder: " in out.output and "appears twice" in out.output
    assert SECRET not in out.output, out.output


def test_every_log_record_is_redacted_at_every_level() -> None:
    """Whatever logger and level: the message, its %-arguments and a traceback's text."""
    store.install_log_redaction()
    store.install_log_redaction()  # idempotent
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("kopf.objects.test")  # Kopf's event poster reads these records
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("connecting to %s", f"postgresql://u:p@ss{SECRET}@db/x")
        logger.warning(f"password={SECRET} in a DSN")
        try:
            raise RuntimeError(f"cannot open postgresql://u:{SECRET}@db/x")
        except RuntimeError:
            logger.exception("pass failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "connecting to postgresql://u:***@db/x" in text
    assert "RuntimeError: cannot open postgresql://u:***@db/x" in text
    assert SECRET not in text, text
