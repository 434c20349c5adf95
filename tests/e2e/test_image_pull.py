"""Images pulled on demand, for real: a local registry (Debian's docker-registry, on a loopback port)
holds a test image that is not on the Docker host; the real waker pulls it through the real engine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
import uuid

import aiohttp
import pytest

from tests.e2e.stack import FAKE_IMAGE, docker, fake_model, free_port
from tests.eventually import eventually

pytestmark = pytest.mark.e2e

REGISTRY = "/usr/bin/docker-registry"
PAYLOAD_MB = 20  # a layer of its own, so the pull moves real bytes


class Registry:
    def __init__(self, tmp) -> None:
        self.root, self.port = tmp / "registry", free_port()
        self.config = tmp / "registry.yml"
        self.process: subprocess.Popen | None = None
        self.digests: dict[str, str] = {}  # image pushed -> its repository@sha256:... as the registry has it

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"  # loopback registries are plain HTTP to Docker, no TLS needed

    def start(self) -> Registry:
        self.config.write_text(
            json.dumps(
                {  # YAML is a superset of JSON
                    "version": 0.1,
                    "log": {"level": "warn", "accesslog": {"disabled": True}},
                    "storage": {"filesystem": {"rootdirectory": str(self.root)}},
                    "http": {"addr": self.host},
                }
            )
        )
        self.process = subprocess.Popen(
            [REGISTRY, "serve", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        eventually(self._answers, 20, "the registry answering")
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def push_test_image(self, tmp) -> str:
        """The fake vLLM image plus a layer of random bytes, pushed here and then removed from the
        Docker host: only a pull can bring it back."""
        image = f"{self.host}/waker/pull-test:{uuid.uuid4().hex[:8]}"
        payload = tmp / "payload"
        payload.write_bytes(os.urandom(PAYLOAD_MB * 1_000_000))
        container = docker("create", FAKE_IMAGE).strip()
        try:
            docker("cp", str(payload), f"{container}:/payload")
            docker("commit", container, image)
        finally:
            docker("rm", container)
        docker("push", image)
        self.digests[image] = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", image))[0]
        docker("rmi", image)
        return image


@pytest.fixture
def registry(tmp_path):
    if not os.path.exists(REGISTRY):
        pytest.fail(f"{REGISTRY} is missing: apt-get install docker-registry", pytrace=False)
    registry = Registry(tmp_path).start()
    yield registry
    registry.stop()


def pulls(image: str, since: float) -> list[dict]:
    """Docker's own record of pulls of `image` since `since`."""
    out = docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        "type=image",
        "--filter",
        "event=pull",
        "--format",
        "{{json .}}",
    )
    return [
        e for e in map(json.loads, out.splitlines()) if e.get("id") == image or e.get("Actor", {}).get("ID") == image
    ]


def pulled_model(image: str, **keys) -> dict:
    return {**fake_model("pulled", load_delay=0.2, **keys), "image": image}


async def complete(session, stack, model: str = "pulled") -> tuple[int, dict]:
    async with session.post(
        f"{stack.url}/v1/completions",
        json={"model": model, "prompt": "x", "max_tokens": 2},
        timeout=aiohttp.ClientTimeout(total=120),
    ) as response:
        return response.status, await response.json()


async def test_twenty_first_requests_share_one_pull_and_see_its_progress(make_stack, registry, tmp_path):
    image = registry.push_test_image(tmp_path)
    since = time.time()
    stack = make_stack([pulled_model(image)])
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(complete(session, stack) for _ in range(20)))
    assert [status for status, _ in answers] == [200] * 20, answers
    assert len(pulls(image, since)) == 1
    progress = [json.loads(line) for line in stack.log().splitlines() if '"event": "image_pull"' in line]
    assert progress and progress[-1]["models"] == ["pulled"], stack.log()
    last = progress[-1]
    assert last["layers_done"] == last["layers_total"] >= 1
    assert last["bytes_done"] == last["bytes_total"] >= PAYLOAD_MB * 1_000_000 * 0.5  # compressed on the wire
    assert '"event": "image_pulled"' in stack.log()


async def test_a_reference_the_registry_does_not_have_gets_the_registrys_reason(make_stack, registry):
    image = f"{registry.host}/waker/absent:1"
    stack = make_stack([pulled_model(image)])
    async with aiohttp.ClientSession() as session:
        status, body = await complete(session, stack)
    assert status == 503 and body["error"]["code"] == "image_pull_failed", body
    assert image in body["error"]["message"] and "manifest unknown" in body["error"]["message"], body


async def test_never_fails_at_once_and_always_falls_back_to_the_local_image(make_stack, registry, tmp_path):
    image = registry.push_test_image(tmp_path)
    since = time.time()
    stack = make_stack([pulled_model(image, pull="never"), {**fake_model("local", load_delay=0.2, pull="always")}])
    async with aiohttp.ClientSession() as session:
        status, body = await complete(session, stack)
        assert status == 503 and body["error"]["code"] == "image_missing", body
        assert 'pull = "never"' in body["error"]["message"] and f"docker pull {image}" in body["error"]["message"]
        assert pulls(image, since) == []
        # FAKE_IMAGE is in no registry this machine reaches: "always" tries, warns, and starts the local one.
        status, _ = await complete(session, stack, "local")
    assert status == 200
    assert '"event": "image_pull_failed_using_local"' in stack.log()


async def test_an_image_pinned_by_digest_is_pulled_by_it_and_a_wrong_digest_refused(make_stack, registry, tmp_path):
    """The catalogue pins registry images as the original does, name:tag@sha256:... (catalogue-check.md
    F8): the pull asks the registry for that digest, and one it does not have gets the registry's reason."""
    image = registry.push_test_image(tmp_path)
    digest = registry.digests[image].split("@", 1)[1]
    wrong = "sha256:" + "0" * 64
    stack = make_stack([pulled_model(f"{image}@{digest}"), {**pulled_model(f"{image}@{wrong}"), "id": "wrong"}])
    async with aiohttp.ClientSession() as session:
        status, _ = await complete(session, stack)
        assert status == 200
        status, body = await complete(session, stack, "wrong")
    assert status == 503 and body["error"]["code"] == "image_pull_failed", body
    assert wrong in body["error"]["message"], body
    (container,) = [
        c for c in stack.containers() if docker("inspect", "--format", "{{.State.Running}}", c).strip() == "true"
    ]
    assert docker("inspect", "--format", "{{.Config.Image}}", container).strip() == f"{image}@{digest}"
