"""The `waker` command run in-process (`main(argv)` answers the exit code): `check` and `nginx-config` on
config files, and the admin commands (waker/cli/admin_client.py) against the real HTTP app served on
loopback over the fake shell. What a user gets: the output, the exit code, and for a failure one clear
line on stderr, never a traceback. `waker run` and `serve` start nginx and Docker: the e2e tests run them."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.unit.shell_fakes import FakeDriver, make_config, until
from tests.unit.test_manual_control import write
from tests.unit.test_supervisor import begin, end, ready
from tests.unit.test_supervisor_hosts import two_hosts
from waker.cli import serve as serve_module
from waker.cli.main import main
from waker.cli.serve import serve
from waker.config.schema import load_config
from waker.core.image_pull import PullProgress
from waker.core.memory import ContainerMemory, HostMemory
from waker.errors import DriverError, StartError

TOKEN = "admin-s3cret"
PULLED = "vllm/vllm-openai:v0.32.0"


@pytest.fixture(autouse=True)
def quiet_waker(monkeypatch):
    """The developer's own $WAKER_* must not steer the commands under test, and the waker's own log
    lines (structlog prints them) must stay out of the commands' output."""
    for name in ("WAKER_URL", "WAKER_ADMIN_TOKEN", "WAKER_CONFIG", "WAKER_SET"):
        monkeypatch.delenv(name, raising=False)
    with capture_logs():
        yield


@pytest.fixture
async def served(api, tmp_path, unused_tcp_port):
    """A waker serving the config file that the commands read too, for its [waker] listen and
    admin_token: `await served(*models)` answers (shell, client, ["--config", path])."""

    async def serve(*models):
        path = tmp_path / "models.toml"
        write(path, list(models), waker={"listen": f"127.0.0.1:{unused_tcp_port}", "admin_token": TOKEN})
        shell, client = await api(config=load_config(path), port=unused_tcp_port)
        return shell, client, ["--config", str(path)]

    return serve


async def waker(capsys, *args: str) -> tuple[int, str, str]:
    """`waker ARGS` in a thread of its own, since the admin client blocks (urllib) while the waker it
    calls answers on this loop: the exit code, stdout and stderr."""
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


def url_of(client) -> str:
    return str(client.make_url(""))


# ---- check and nginx-config --------------------------------------------------------------------


def test_check_describes_each_model_with_what_sets_it_apart(tmp_path, capsys):
    path = tmp_path / "models.toml"
    path.write_text(
        textwrap.dedent(
            """
            [[model]]
            id = "a"
            aliases = ["small", "tiny"]
            image = "img:a"
            gpu_memory = 0.5
            exclusive = true
            [[model]]
            id = "b"
            image = "img:b"
            keep_warm = true
            status = "experimental"
            [[model]]
            id = "s"
            image = "img:s"
            command = ["serve", "s", "--served-model-name=s"]
            gpu_memory = 0.4
            sleep = 1
            sleep_memory = 0.05
            idle_timeout = "90m"
            [[model]]
            id = "old"
            image = "img:old"
            status = "disabled"
            notes = "superseded by a"
            """
        )
    )
    assert main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}: 3 model(s) (1 more disabled), gateway on 127.0.0.1:8009, waker on 127.0.0.1:18080",
        "  a (aliases: small, tiny): img:a, port 8000 -> 127.0.0.1:18100, gpu 0.5, exclusive, "
        "start_timeout 15m, idle_timeout 20m",
        "  b: img:b, port 8000 -> 127.0.0.1:18101, no gpu budget, keep_warm, start_timeout 15m, idle_timeout 20m, "
        "experimental",
        "  s: img:s, port 8000 -> 127.0.0.1:18102, gpu 0.4, sleeps at level 1 holding 0.05, start_timeout 15m, "
        "idle_timeout 1h30m",
        "  old: disabled (superseded by a)",
    ]
    assert err == ""


def test_nginx_config_prints_the_config_nginx_would_run(tmp_path, capsys):
    path = tmp_path / "models.toml"
    write(path, [{"id": "a"}], waker={"listen": "127.0.0.1:18999"})
    assert main(["nginx-config", "--config", str(path), "--set", "gateway.listen=127.0.0.1:8123"]) == 0
    conf = capsys.readouterr().out
    assert "listen 127.0.0.1:8123;" in conf  # the override is applied
    assert "location @wake_a { set $wake_uri /_wake/a;" in conf and "location @retry_a {" in conf
    assert "127.0.0.1:18999" in conf  # where nginx finds the waker


def test_a_command_on_a_broken_config_lists_its_problems_and_starts_nothing(tmp_path, capsys):
    path = tmp_path / "models.toml"
    path.write_text('[[model]]\nid = "a"\nimage = "i"\ngpu_memory = 3\n[[model]]\nid = "a"\nimage = "i"\n')
    for command in ("check", "nginx-config", "serve", "run", "gateway"):  # serve, run and gateway never begin
        assert main([command, "--config", str(path)]) == 2, command
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert lines[0] == "waker: the config has 2 problem(s):" and len(lines) == 3, err
        assert "model 'a': field 'gpu_memory'" in lines[1] and "'a'" in lines[2] and out == ""
    assert main(["check", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml: cannot read the config file: No such file or directory" in capsys.readouterr().err


def test_a_wrong_command_line_gets_the_usage(capsys):
    for argv, complaint in (
        ([], "the following arguments are required: command"),
        (["start"], "the following arguments are required: model"),
        (["logs", "a", "--tail", "many"], "argument --tail: invalid int value: 'many'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("usage: waker") and complaint in err, err


# ---- the admin commands ------------------------------------------------------------------------


async def test_status_shows_every_model_in_a_table_or_as_json(served, capsys):
    shell, client, config = await served(
        {"id": "a", "aliases": ["small"]},
        {"id": "b", "exclusive": True, "memory": "4GiB"},
        {"id": "c", "image": PULLED},
        {"id": "d"},
    )
    await ready(shell, "a")
    shell.driver.memory_in_use[shell.supervisor.records["a"].container] = ContainerMemory(5 * 2**29, None)
    shell.control.set_pinned("a", True)
    shell.driver.outcomes["d"].append(
        StartError(503, "model_exited", "model 'd' exited with code 1 while loading: torch.OutOfMemoryError\nmore")
    )
    assert await waker(capsys, "start", "d", *config) == (
        1,
        "",
        "waker start: model 'd' exited with code 1 while loading: torch.OutOfMemoryError\nmore\n",
    )
    shell.driver.hold("c")
    shell.driver.pulls[PULLED] = PullProgress(PULLED, 3, 11, 1_200_000_000, 9_800_000_000)
    assert await waker(capsys, "start", "c", "--no-wait", *config) == (0, "c: starting\n", "")
    shell.clock.advance(3660)
    begin(shell, "a", b"r1")
    end(shell, "a", b"r1")
    shell.clock.advance(65)
    code, out, err = await waker(capsys, "status", *config)
    assert (code, err) == (0, "")
    table = """\
MODEL  STATE                                                                               IN-FLIGHT  QUEUED  UPTIME  IDLE   GPU  MEMORY  FLAGS      LAST ERROR
a      ready                                                                               0          0       1h02m   1m05s  0.3  2.5G/-  pinned     -
b      stopped                                                                             0          0       -       -      0.3  -/4.0G  exclusive  -
c      starting 1h02m/- (pulling vllm/vllm-openai:v0.32.0: 3/11 layers, 1.2 GB of 9.8 GB)  0          1       -       -      0.3  -       -          -
d      failed                                                                              0          0       -       -      0.3  -       -          model 'd' exited with code 1 while loading: torch.OutOfMemor
c: pulling image vllm/vllm-openai:v0.32.0: 3/11 layers · 1.2 GB of 9.8 GB, 3725 s so far (its first start: no earlier one to compare with)
queue: 1   docker: connected
"""  # noqa: E501 (the table as printed, its columns as wide as their widest cell)
    assert out == table  # the first line of an error only, cut at 60 characters
    code, out, _ = await waker(capsys, "status", "--json", *config)
    listing = await client.get("/admin/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 0 and json.loads(out) == await listing.json()


async def test_status_over_several_hosts_shows_where_each_model_runs(api, capsys):
    one, two = FakeDriver(), FakeDriver()
    shell, client = await api(config=two_hosts({"id": "a"}, {"id": "b"}), hosts={"one": one, "two": two})
    await ready(shell, "a")
    await ready(shell, "b")  # no room left on one
    two.lose("ssh: connect to host two port 22: No route to host")
    code, out, err = await waker(capsys, "status", "--url", url_of(client), "--token", "none-needed")
    assert (code, err) == (0, "")
    assert out == textwrap.dedent(
        """\
        MODEL  STATE    HOST  IN-FLIGHT  QUEUED  UPTIME  IDLE  GPU  MEMORY  FLAGS  LAST ERROR
        a      ready    one   0          0       0s      0s    0.6  -       -      -
        b      stopped  two   0          0       -       -     0.6  -       -      -
        queue: 0   docker: connected
        host one: GPU 0.6 of 1 (a), connected
        host two: GPU 0 of 1 (nothing), DOWN: ssh: connect to host two port 22: No route to host
        """
    )


async def test_status_shows_the_memory_the_guard_watches(api, capsys):
    memory = HostMemory(total=121 * 2**30, available=int(40.5 * 2**30), free=2**30, swap_free=0)
    machine = SimpleNamespace(read=lambda: memory, learned=dict, remember=print, paused=dict, remember_paused=print)
    shell, client = await api({"id": "a"}, memory=machine, memory_floor="8GiB")
    code, out, err = await waker(capsys, "status", "--url", url_of(client), "--token", "none-needed")
    assert (code, err) == (0, "") and out.endswith(
        "queue: 0   docker: connected\nmemory: 40.5 GiB available of 121.0, floor 8.0\n"
    )


async def test_status_shows_each_hosts_memory_or_why_it_is_not_measured(api, capsys):
    memory = HostMemory(total=121 * 2**30, available=int(40.5 * 2**30), free=2**30, swap_free=0)
    machine = SimpleNamespace(read=lambda: memory, learned=dict, remember=print, paused=dict, remember_paused=print)
    one, two = FakeDriver(), FakeDriver()
    two.host_memory_now = DriverError("no image to read the host's memory with: none of vllm:1 is on it")
    shell, client = await api(config=two_hosts({"id": "a"}), hosts={"one": one, "two": two}, memory=machine)
    await until(lambda: shell.supervisor.guards["two"].error, "host two's first reading tried")
    code, out, _ = await waker(capsys, "status", "--url", url_of(client), "--token", "none-needed")
    assert "memory on one: 40.5 GiB available of 121.0, floor 2.0\n" in out
    assert "memory on two: not measured: no image to read the host's memory with: none of vllm:1 is on it\n" in out


async def test_the_model_commands_say_what_they_did_or_why_not(served, capsys):
    shell, client, config = await served({"id": "a"}, {"id": "b"})

    async def command(*args: str) -> tuple[int, str, str]:
        return await waker(capsys, *args, *config)

    assert await command("start", "a") == (0, "a: ready\n", "")
    assert await command("pin", "a") == (0, "a: ready\n", "")
    assert shell.supervisor.current_slots()["a"].pinned
    assert await command("unpin", "a") == (0, "a: ready\n", "")
    begin(shell, "a", b"r1")
    assert await command("stop", "a") == (
        1,
        "",
        "waker stop: model 'a' has 1 request(s) in flight; stopping it would cut them off (force=true does it "
        "anyway)\n",
    )
    assert await command("stop", "a", "--force") == (0, "a: stopping (now stopped)\n", "")
    end(shell, "a", b"r1")  # nginx tells the waker the cut-off request is over
    assert await command("stop", "a") == (0, "a: already stopped (now stopped)\n", "")
    assert await command("wake", "a") == (0, "a: ready\n", "")  # a start: a stopped model is started
    assert (await command("sleep", "a"))[2].startswith("waker sleep: model 'a' cannot sleep: sleep mode is off")
    code, out, _ = await command("stop", "a", "--no-wait", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "stopping"
    assert await command("start", "nope") == (1, "", "waker start: unknown model 'nope'; the models are: a, b\n")
    shell.driver.outcomes["b"].append(StartError(503, "model_exited", "boom"))
    assert (await command("start", "b"))[0] == 1
    assert await command("stop", "b") == (0, "b: failure cleared (now stopped)\n", "")


async def test_logs_and_unload(served, capsys):
    shell, client, config = await served({"id": "a"}, {"id": "b"})

    async def command(*args: str) -> tuple[int, str, str]:
        return await waker(capsys, *args, *config)

    assert await command("logs", "a") == (1, "", "waker logs: model 'a' has no container yet; start it first\n")
    await ready(shell, "a")
    await ready(shell, "b")
    begin(shell, "b", b"r1")
    shell.driver.tails["a-1"] = "loading\nready\nserving"
    assert await command("logs", "a", "--tail", "2") == (0, "ready\nserving\n", "")
    assert await command("logs", "a", "--follow") == (0, "loading\nready\nserving\n", "")
    code, out, _ = await command("logs", "a", "-f", "--tail", "1", "--json")
    assert (code, [json.loads(line) for line in out.splitlines()]) == (0, [{"line": "serving"}])
    code, out, _ = await command("unload")
    assert code == 0 and out.splitlines() == [
        "a: stopping",
        "b: skipped: model 'b' has 1 request(s) in flight; stopping it would cut them off (force=true does it anyway)",
    ]
    assert await command("unload", "--force") == (0, "b: stopping\n", "")
    assert await command("unload") == (0, "nothing to unload\n", "")


async def test_reload_and_prepare(served, capsys):
    shell, client, config = await served({"id": "a"}, {"id": "b"}, {"id": "c"})

    async def command(*args: str) -> tuple[int, str, str]:
        return await waker(capsys, *args, *config)

    assert await command("reload") == (0, "reloaded, nothing changed\n", "")
    path = Path(config[1])
    write(path, [{"id": "a", "gpu_memory": 0.4}, {"id": "b"}, {"id": "d"}], waker=load_waker_table(path))
    assert await command("reload") == (0, "reloaded (added: d, changed: a, removed: c)\n", "")
    assert await command("prepare", "a") == (0, "a: image present, container created\n", "")
    code, out, _ = await command("prepare")
    assert code == 0 and out.splitlines() == [f"{m}: image present, container created" for m in ("a", "b", "d")]
    assert await command("prepare", "a", "x") == (1, "", "waker prepare: unknown model(s) ['x']\n")
    shell.driver.prepare = broken_prepare  # the engine has lost the image
    assert await command("prepare", "a") == (1, "a: image missing, ERROR no such image: fake:test\n", "")

    write(path, [{"id": "a"}, {"id": "e", "gpu_memory": 3}], waker=load_waker_table(path))
    code, _, err = await waker(capsys, "reload", "--url", url_of(client), "--token", TOKEN)
    assert code == 1 and err.startswith("waker reload: the new config was refused; the running one stays: ")
    assert "model 'e': field 'gpu_memory'" in err and [m.id for m in shell.supervisor.config.models] == ["a", "b", "d"]
    # Without --url, the command itself needs the file for the waker's address: it names the problems.
    code, _, err = await command("reload")
    assert code == 2 and err.startswith("waker reload: no --url or $WAKER_URL, and the config cannot be read: ")
    assert "model 'e': field 'gpu_memory'" in err


def load_waker_table(path: Path) -> dict[str, str]:
    """The [waker] table of the served config, to write a new file the running waker accepts."""
    config = load_config(path)
    return {"listen": str(config.waker.listen), "admin_token": config.waker.admin_token}


async def broken_prepare(model) -> dict[str, str]:
    return {"image": "missing", "error": f"no such image: {model.image}"}


async def test_where_the_commands_find_the_waker_and_its_token(served, capsys, monkeypatch, unused_tcp_port_factory):
    shell, client, config = await served({"id": "a"})
    url = url_of(client)
    assert (await waker(capsys, "pin", "a", *config))[0] == 0  # [waker] listen and admin_token of the config
    assert (await waker(capsys, "pin", "a", "--url", url, "--token", TOKEN))[0] == 0
    code, _, err = await waker(capsys, "pin", "a", "--url", url, "--token", "wrong")
    assert (code, err) == (
        1,
        "waker pin: missing or wrong admin token: send 'Authorization: Bearer <token>' with [waker] admin_token\n",
    )
    absent = str(Path(config[1]).with_name("absent.toml"))
    code, _, err = await waker(capsys, "pin", "a", "--config", absent)
    assert code == 2 and err.startswith("waker pin: no --url or $WAKER_URL, and the config cannot be read: ")
    assert "absent.toml: cannot read the config file" in err
    assert (await waker(capsys, "pin", "a", "--url", url, "--config", absent))[0] == 1  # no token to send
    monkeypatch.setenv("WAKER_URL", url)
    monkeypatch.setenv("WAKER_ADMIN_TOKEN", TOKEN)
    assert await waker(capsys, "pin", "a", "--config", absent) == (0, "a: stopped\n", "")  # the environment's
    nowhere = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    code, _, err = await waker(capsys, "status", "--url", nowhere)
    assert code == 3 and err == (
        f"waker status: cannot reach the waker at {nowhere} ([Errno 111] Connection refused); "
        "is `waker run` running, and is --url right?\n"
    )


async def test_an_error_page_that_is_not_the_wakers_is_named_by_its_status(model_server, capsys):
    code, _, err = await waker(capsys, "status", "--url", model_server.url, "--token", TOKEN)
    assert (code, err) == (1, "waker status: HTTP 404 Not Found\n")  # a model server has no /admin/


async def test_a_url_where_something_else_answers_is_named_never_a_traceback(aiohttp_server, capsys):
    async def page(request: web.Request) -> web.Response:  # a web UI's page, whatever the path
        return web.Response(text="<!doctype html><title>Open WebUI</title>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", page)
    elsewhere = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    for command, answer in (
        (["status"], "not JSON"),
        (["start", "a"], "not JSON"),
        (["logs", "a"], "not JSON"),
        (["logs", "a", "-f"], "not an event stream"),
        (["events"], "not an event stream"),
    ):
        code, out, err = await waker(capsys, *command, "--url", elsewhere, "--token", TOKEN)
        assert (code, out) == (3, ""), command
        assert err == (
            f"waker {command[0]}: what answers at {elsewhere} is not the waker (its answer is {answer}); "
            "is --url right ([waker] listen)?\n"
        )


async def test_events_print_what_happens_until_the_waker_goes_away(served, capsys, monkeypatch):
    shell, client, config = await served({"id": "a"})
    listening = asyncio.Event()
    listen = shell.supervisor.bus.listen

    def listen_and_tell():
        queue = listen()
        listening.set()
        return queue

    monkeypatch.setattr(shell.supervisor.bus, "listen", listen_and_tell)
    following = asyncio.ensure_future(asyncio.to_thread(main, ["events", *config]))
    async with asyncio.timeout(5):
        await listening.wait()
    await ready(shell, "a")
    printed = said = ""

    def has_printed_ready() -> bool:
        nonlocal printed, said
        out, err = capsys.readouterr()
        printed, said = printed + out, said + err
        return "model_ready" in printed

    await until(has_printed_ready, "the events printed")
    url = url_of(client).rstrip("/")
    assert said == f"following the events of the waker at {url}; Ctrl-C ends\n"
    assert printed.splitlines() == [
        "request_queued model=a waiter=0 queue_length=1",
        "model_state model=a state=starting previous=stopped trigger=start error=None",
        "model_state model=a state=ready previous=starting trigger=ready error=None",
        "model_ready model=a seconds=0.0",
    ]
    for connection in client.server.runner.server.connections:
        connection.force_close()  # the waker is gone (stopped, restarted): its connections close
    assert await following == 3
    assert capsys.readouterr() == (
        "",
        f"waker events: the waker at {url} ended the event stream; did it stop or restart?\n",
    )


async def test_dropping_the_page_cache_where_the_waker_may_not_is_refused_at_start(monkeypatch):
    config = make_config({"id": "a"}, drop_page_cache=True)
    with capture_logs() as logs:
        assert await serve(config, "container") == 1
        monkeypatch.setattr(serve_module, "may_drop_page_cache", lambda: "/proc/sys/vm/drop_caches is not writable")
        assert await serve(config, "child") == 1
    assert [entry["event"] for entry in logs] == ["startup_failed", "startup_failed"]
    assert "cannot work in the compose deployment" in logs[0]["error"]
    assert "is not writable. Run the waker as root" in logs[1]["error"]
