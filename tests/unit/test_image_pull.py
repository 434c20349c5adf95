"""Pulling a model's image: progress from Docker's stream, credentials from `docker login`, and the
pull policy with one shared pull per image (against a fake runtime: no Docker here)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat

import pytest

from tests.eventually import eventually_async
from tests.unit.test_container_spec import model
from waker.core.image_pull import PullProgress, PullTracker
from waker.docker.images import Images
from waker.docker.registry_auth import credentials, registry_of
from waker.errors import DockerError, ImageMissing, ImagePullFailed, PullFailed

# What Docker 20.10 streams for a two-layer image of which one layer is already here.
STREAM = [
    {"status": "Pulling from waker/pull-test", "id": "1"},
    {"status": "Already exists", "id": "aaa"},
    {"status": "Pulling fs layer", "id": "bbb"},
    {"status": "Downloading", "progressDetail": {"current": 1000, "total": 4000}, "id": "bbb"},
    {"status": "Downloading", "progressDetail": {"current": 3000, "total": 4000}, "id": "bbb"},
    {"status": "Download complete", "id": "bbb"},
    {"status": "Extracting", "progressDetail": {"current": 500, "total": 4000}, "id": "bbb"},
    {"status": "Pull complete", "id": "bbb"},
    {"status": "Digest: sha256:0123"},
    {"status": "Status: Downloaded newer image for 127.0.0.1:5000/waker/pull-test:1"},
]


def test_progress_counts_layers_and_bytes_as_docker_streams_them():
    tracker = PullTracker("img")
    seen = []
    for message in STREAM:
        tracker.feed(message)
        seen.append(tracker.snapshot())
    assert seen[3] == PullProgress("img", layers_done=1, layers_total=2, bytes_done=1000, bytes_total=4000)
    assert seen[-1] == PullProgress("img", layers_done=2, layers_total=2, bytes_done=4000, bytes_total=4000)
    assert seen[-1].describe() == "pulling img: 2/2 layers, 4.0 kB of 4.0 kB"


def test_an_error_in_the_stream_is_the_registrys_own_words():
    tracker = PullTracker("img")
    with pytest.raises(PullFailed, match="manifest for img not found: manifest unknown"):
        tracker.feed(
            {
                "errorDetail": {"message": "manifest for img not found: manifest unknown"},
                "error": "manifest for img not found",
            }
        )


@pytest.mark.parametrize(
    "image, registry",
    [
        ("ubuntu", "docker.io"),
        ("user/repo:1", "docker.io"),
        ("nvcr.io/nvidia/vllm:25.10-py3", "nvcr.io"),
        ("localhost:5000/x", "localhost:5000"),
        ("127.0.0.1:5000/a/b:1", "127.0.0.1:5000"),
        ("ghcr.io/ggml-org/llama.cpp:server", "ghcr.io"),
        ("localhost/x", "localhost"),
    ],
)
def test_the_registry_of_a_reference_as_docker_reads_it(image, registry):
    assert registry_of(image) == registry


def write_config(tmp_path, config: dict):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_credentials_from_docker_login_entries(tmp_path):
    auth = base64.b64encode(b"me:s3cret:with-colon").decode()
    hub = base64.b64encode(b"hub:pw").decode()
    path = write_config(tmp_path, {"auths": {"nvcr.io": {"auth": auth}, "https://index.docker.io/v1/": {"auth": hub}}})
    assert credentials("nvcr.io/nvidia/vllm:1", path) == {
        "username": "me",
        "password": "s3cret:with-colon",
        "serveraddress": "nvcr.io",
    }
    assert credentials("org/image:1", path)["username"] == "hub"
    assert credentials("ghcr.io/x/y:1", path) is None  # no entry: anonymous
    assert credentials("ghcr.io/x/y:1", tmp_path / "absent.json") is None


def test_credentials_from_a_credential_helper(tmp_path, monkeypatch):
    helper = tmp_path / "docker-credential-fake"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        "[ \"$server\" = ghcr.io ] || { echo 'credentials not found' >&2; exit 1; }\n"
        'echo \'{"ServerURL":"ghcr.io","Username":"bot","Secret":"tok"}\'\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    path = write_config(tmp_path, {"credHelpers": {"ghcr.io": "fake"}, "credsStore": "fake"})
    assert credentials("ghcr.io/x/y:1", path) == {"username": "bot", "password": "tok", "serveraddress": "ghcr.io"}
    assert credentials("quay.io/x/y:1", path) is None  # the helper has none for it


class FakeRuntime:
    """Docker as far as Images uses it: image ids, and pulls that take a moment and can fail."""

    def __init__(self, present: dict[str, str], fail: str = "") -> None:
        self.present, self.fail, self.pulls = present, fail, []

    async def image_id(self, image):
        return self.present.get(image)

    async def pull(self, image, auth, on_progress):
        self.pulls.append((image, auth))
        await asyncio.sleep(0.05)
        if self.fail:
            raise DockerError(f"cannot pull image {image!r}: {self.fail}")
        tracker = PullTracker(image)
        for message in STREAM:
            tracker.feed(message)
            on_progress(tracker.snapshot())
        self.present[image] = "sha256:new"


def images(runtime):
    reports = []
    return Images(runtime, lambda image, progress: reports.append(progress), credentials=lambda image: None), reports


async def test_missing_pulls_once_for_every_start_waiting_and_reports_progress():
    runtime = FakeRuntime({})
    source, reports = images(runtime)
    ids = await asyncio.gather(*(source.ensure(model(image="reg.io/a/b:1")) for _ in range(5)))
    assert ids == ["sha256:new"] * 5 and len(runtime.pulls) == 1
    assert reports[-1].layers_done == 2 and source.pulling == {}


async def test_missing_does_not_pull_a_present_image_and_never_names_how_to_get_one():
    runtime = FakeRuntime({"reg.io/a/b:1": "sha256:old"})
    source, _ = images(runtime)
    assert await source.ensure(model(image="reg.io/a/b:1")) == "sha256:old" and runtime.pulls == []
    with pytest.raises(ImageMissing, match=r'pull = "never": build it \(scripts/build-images'):
        await source.ensure(model(image="waker/vllm-gb10:1", pull="never"))


async def test_always_pulls_and_falls_back_to_the_local_image_only_if_there_is_one():
    source, _ = images(FakeRuntime({"reg.io/a/b:1": "sha256:old"}, fail="connection refused"))
    assert await source.ensure(model(image="reg.io/a/b:1", pull="always")) == "sha256:old"
    source, _ = images(FakeRuntime({}, fail="manifest unknown"))
    with pytest.raises(ImagePullFailed, match="manifest unknown.*docker pull reg.io/a/b:1"):
        await source.ensure(model(image="reg.io/a/b:1", pull="always"))


async def test_a_start_that_gives_up_leaves_the_pull_running_for_the_others():
    runtime = FakeRuntime({})
    source, _ = images(runtime)
    impatient = asyncio.ensure_future(source.ensure(model(image="reg.io/a/b:1")))

    async def pulling() -> bool:
        return bool(runtime.pulls)

    await eventually_async(pulling, 5, "the pull started")
    impatient.cancel()
    assert await source.ensure(model(image="reg.io/a/b:1")) == "sha256:new"
    assert len(runtime.pulls) == 1
