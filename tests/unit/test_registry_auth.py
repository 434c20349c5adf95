"""Registry credentials as `docker login` left them (registry_auth.py): where the Docker client's config
is read from, and what becomes of a config or a credential helper that cannot be used (an anonymous
pull, said in the log). The ordinary cases are in test_image_pull.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from structlog.testing import capture_logs

from waker.docker.registry_auth import credentials


def write_config(directory: Path, config: dict) -> Path:
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


def helper(tmp_path: Path, monkeypatch, name: str, answer: str) -> None:
    """A `docker-credential-<name>` on PATH that prints `answer` for any registry."""
    script = tmp_path / f"docker-credential-{name}"
    script.write_text(f"#!{sys.executable} -IS\nimport sys\nsys.stdin.read()\nprint({answer!r})\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_the_config_is_docker_configs_else_the_users_own(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    (tmp_path / ".docker").mkdir()
    write_config(tmp_path / ".docker", {"auths": {"ghcr.io": {"identitytoken": "home-token"}}})
    assert credentials("ghcr.io/x/y:1") == {"identitytoken": "home-token", "serveraddress": "ghcr.io"}
    elsewhere = tmp_path / "ci"
    elsewhere.mkdir()
    write_config(elsewhere, {"auths": {"https://ghcr.io": {"identitytoken": "ci-token"}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(elsewhere))
    assert credentials("ghcr.io/x/y:1") == {"identitytoken": "ci-token", "serveraddress": "https://ghcr.io"}


def test_a_config_that_cannot_be_read_means_an_anonymous_pull_said_in_the_log(tmp_path):
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    with capture_logs() as logs:
        assert credentials("ghcr.io/x/y:1", broken) is None
        assert credentials("ghcr.io/x/y:1", tmp_path) is None  # a directory: unreadable as a file
    assert [entry["event"] for entry in logs] == ["docker_config_unreadable"] * 2
    assert logs[0]["path"] == str(broken)


def test_a_helpers_token_is_sent_as_an_identity_token(tmp_path, monkeypatch):
    helper(tmp_path, monkeypatch, "tok", json.dumps({"ServerURL": "nvcr.io", "Username": "<token>", "Secret": "rt"}))
    path = write_config(tmp_path, {"credHelpers": {"nvcr.io": "tok"}})
    assert credentials("nvcr.io/nvidia/vllm:1", path) == {"identitytoken": "rt", "serveraddress": "nvcr.io"}


def test_a_helper_that_cannot_answer_means_an_anonymous_pull_said_in_the_log(tmp_path, monkeypatch):
    helper(tmp_path, monkeypatch, "garbled", "Error: no such keychain")
    with capture_logs() as logs:
        assert credentials("ghcr.io/x/y:1", write_config(tmp_path, {"credsStore": "garbled"})) is None
        assert credentials("ghcr.io/x/y:1", write_config(tmp_path, {"credsStore": "not-installed"})) is None
    assert [(entry["event"], entry["helper"]) for entry in logs] == [
        ("credential_helper_failed", "garbled"),
        ("credential_helper_failed", "not-installed"),
    ]
    assert logs[0]["error"] == "its answer is not JSON" and "docker-credential-not-installed" in logs[1]["error"]


def test_a_login_entry_that_is_not_base64_means_an_anonymous_pull_said_in_the_log(tmp_path):
    path = write_config(tmp_path, {"auths": {"ghcr.io": {"auth": "bWU6c2VjcmV"}}})  # pasted with a character lost
    with capture_logs() as logs:
        assert credentials("ghcr.io/x/y:1", path) is None
    assert [entry["event"] for entry in logs] == ["docker_config_unreadable"]
    assert "'auth' of ghcr.io is not base64 of user:password" in logs[0]["error"]
