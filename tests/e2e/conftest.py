import shutil
import subprocess

import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.docker_proxy import DockerCallCounter
from tests.e2e.second_engine import SecondEngine
from tests.e2e.stack import FAKE_IMAGE, Stack


@pytest.fixture(scope="session", autouse=True)
def docker_engine():
    """End-to-end tests need a real Docker engine and the fake vLLM image: fail loudly, never skip."""
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        pytest.fail(f"no Docker engine: {info.stderr.strip()} (start dockerd; .ci/run shows how)", pytrace=False)
    image = subprocess.run(["docker", "image", "inspect", FAKE_IMAGE], capture_output=True, text=True)
    if image.returncode != 0:
        pytest.fail(f"image {FAKE_IMAGE} is missing: run scripts/build-test-images", pytrace=False)
    if shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin") is None:
        pytest.fail("nginx is not installed (apt-get install nginx libnginx-mod-http-js)", pytrace=False)


@pytest.fixture
def make_stack(tmp_path):
    stacks = []

    def make(models, **kwargs) -> Stack:
        stack = Stack(models=models, tmp=tmp_path / f"stack{len(stacks)}", **kwargs)
        stack.tmp.mkdir()
        stacks.append(stack)
        return stack.start()

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def docker_call_counter(tmp_path):
    counter = DockerCallCounter(tmp_path / "docker.sock").start()
    yield counter
    counter.stop()


@pytest.fixture(scope="session")
def second_engine():
    """A second Docker engine on this machine (tests/e2e/second_engine.py), holding the fake vLLM image.
    Started once per session; a test that stops it starts it again before it ends."""
    engine = SecondEngine().acquire()
    try:
        engine.start()
        engine.remove_all_containers()
        engine.load_images(FAKE_IMAGE)
        yield engine
        engine.remove_all_containers()
    finally:
        engine.stop()
        engine.release()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page():
    """A real browser's page (Chromium, headless), for the dashboard."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        yield page
        browser.close()
