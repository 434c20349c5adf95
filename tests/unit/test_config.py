import io
import re
import textwrap
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from waker.cli.main import main
from waker.config.fields import address
from waker.config.fixups import model_context
from waker.config.schema import LoadingFeedback, load_config
from waker.errors import ConfigError
from waker.system.memory import ThisMachine

ISSUE_EXAMPLE = """
[gateway]
listen = "127.0.0.1:8009"

[waker]
listen = "127.0.0.1:18080"

[scheduler]
start_timeout = "15m"
stop_timeout = "5s"
idle_timeout = "20m"

[defaults]
shm_size = "16g"
env = { VLLM_NO_USAGE_STATS = "1" }

[[model]]
id = "qwen2.5-1.5b-instruct"
aliases = ["small"]
image = "avarok/vllm-dgx-spark:v11"
command = ["serve", "Qwen/Qwen2.5-1.5B-Instruct", "--port", "8000"]
port = 8000
health = "/health"
env = { HF_HOME = "/root/.cache/huggingface" }
volumes = ["./models:/models"]
gpus = "all"
gpu_memory = 0.04

[[model]]
id = "gpt-oss-20b"
image = "christopherowen/vllm-dgx-spark:v12"
idle_timeout = "0"
start_timeout = 5400
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_issue_example_parses_with_defaults_applied(tmp_path):
    config = load_config(write(tmp_path, ISSUE_EXAMPLE))
    small, big = config.models
    assert str(config.gateway.listen) == "127.0.0.1:8009"
    assert config.waker.listen.port == 18080
    assert small.id == "qwen2.5-1.5b-instruct" and small.aliases == ("small",)
    assert small.command == ("serve", "Qwen/Qwen2.5-1.5B-Instruct", "--port", "8000")
    assert small.shm_size == 16 * 1024**3 and big.shm_size == 16 * 1024**3
    assert dict(small.env) == {"HF_HOME": "/root/.cache/huggingface", "VLLM_NO_USAGE_STATS": "1"}
    assert dict(big.env) == {"VLLM_NO_USAGE_STATS": "1"}
    assert small.volumes == (f"{tmp_path.resolve()}/models:/models",)
    assert small.gpus == "all" and small.gpu_memory == 0.04
    assert small.start_timeout == 900 and small.stop_timeout == 5 and small.idle_timeout == 1200
    assert big.idle_timeout == 0 and big.start_timeout == 5400
    assert big.port == 8000 and big.health == "/health" and big.gpus == "" and big.gpu_memory == 0
    assert small.host_port != big.host_port
    assert config.resolve("small") is small and config.resolve("nope") is None


def test_minimal_config_uses_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, '[[model]]\nid = "m"\nimage = "i"\n'))
    assert str(config.gateway.listen) == "127.0.0.1:8009"
    assert str(config.waker.listen) == "127.0.0.1:18080"
    assert config.scheduler.start_timeout == 900
    assert config.models[0].host_port == 18100
    assert config.gateway.client_model_control is False  # clients may not stop models unless allowed
    assert config.gateway.loading_feedback is LoadingFeedback.REASONING
    assert config.models[0].loading_feedback is LoadingFeedback.REASONING


def test_loading_feedback_is_set_for_the_gateway_and_overridden_per_model(tmp_path):
    config = load_config(
        write(
            tmp_path,
            '[gateway]\nloading_feedback = "off"\n'
            '[[model]]\nid = "a"\nimage = "i"\n'
            '[[model]]\nid = "b"\nimage = "i"\nloading_feedback = "reasoning"\n',
        )
    )
    assert config.gateway.loading_feedback is LoadingFeedback.OFF
    assert [m.loading_feedback for m in config.models] == [LoadingFeedback.OFF, LoadingFeedback.REASONING]


BROKEN = [
    # (config text, what the one-line error must say)
    ('[[model]]\nid = "a b"\nimage = "i"', ["model 'a b'", "field 'id'", "not a valid name"]),
    ('[[model]]\nid = "m"', ["model 'm'", "field 'image' is required"]),
    ('[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 1.5', ["model 'm'", "field 'gpu_memory'", "(0, 1]"]),
    ('[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 0', ["field 'gpu_memory'"]),
    ('[[model]]\nid = "m"\nimage = "i"\nidle_timeout = "-5s"', ["field 'idle_timeout'", "positive"]),
    ('[[model]]\nid = "m"\nimage = "i"\nstart_timeout = "soon"', ["field 'start_timeout'", "duration"]),
    ('[[model]]\nid = "m"\nimage = "i"\nstart_timeout = 0', ["field 'start_timeout'", "longer than zero"]),
    ('[[model]]\nid = "m"\nimage = "i"\nport = 70000', ["field 'port'", "65535"]),
    ('[[model]]\nid = "m"\nimage = "i"\nport = "8000"', ["field 'port'"]),
    ('[[model]]\nid = "m"\nimage = "i"\ncommand = "serve x"', ["field 'command'", "array"]),
    ('[[model]]\nid = "m"\nimage = "i"\nenv = { 1X = "a" }', ["field 'env'", "1X"]),
    ('[[model]]\nid = "m"\nimage = "i"\nvolumes = ["relative"]', ["field 'volumes'", "HOST_PATH"]),
    ('[[model]]\nid = "m"\nimage = "i"\ngpus = "some"', ["field 'gpus'", "all"]),
    ('[[model]]\nid = "m"\nimage = "i"\nhealth = "health"', ["field 'health'", "'/'"]),
    ('[[model]]\nid = "m"\nimage = "i"\nshm_size = "big"', ["field 'shm_size'", "size"]),
    ('[[model]]\nid = "m"\nimage = "i"\ncolour = "red"', ["model 'm'", "unknown field 'colour'"]),
    ('[[model]]\nid = "m"\nimage = "i"\n[[model]]\nid = "m"\nimage = "j"', ["id 'm' is already used"]),
    (
        '[[model]]\nid = "m"\nimage = "i"\n[[model]]\nid = "n"\nimage = "j"\naliases = ["m"]',
        ["model 'n'", "alias 'm' is already used by model 'm'"],
    ),
    ('[[model]]\nid = "chat"\nimage = "i"', ["'chat' is reserved"]),
    ('[[model]]\nid = "m"\nimage = "i"\nhost_port = 8009', ["field 'host_port'", "8009"]),
    ('[gateway]\nlisten = "nowhere"', ["[gateway]", "field 'listen'", "HOST:PORT"]),
    ("[gateway]\ncolour = 1", ["[gateway]", "unknown field 'colour'"]),
    ('[waker]\nname = "Has Spaces"', ["[waker]", "field 'name'"]),
    ("[scheduler]\nidle_timeout = true", ["[scheduler]", "field 'idle_timeout'"]),
    ("[gpu]\nx = 1", ["unknown section [gpu]"]),
    ('[gateway]\napi_keys = ["short"]', ["field 'api_keys'", "8 to 512 characters"]),
    ('[gateway]\napi_keys = ["${WAKER_UNSET_VARIABLE_X}"]', ["WAKER_UNSET_VARIABLE_X is not set"]),
    ('[gateway]\napi_keys_file = "absent-keys.txt"', ["field 'api_keys_file'", "cannot read"]),
    ('[gateway]\ncors_origins = ["localhost:3000/"]', ["field 'cors_origins'", "origin"]),
    ('[gateway]\nclient_model_control = "yes"', ["[gateway]", "field 'client_model_control'", "true or false"]),
    ('[gateway]\nloading_feedback = "dots"', ["[gateway]", "field 'loading_feedback'", "'reasoning', 'off'"]),
    ('[[model]]\nid = "m"\nimage = "i"\nloading_feedback = true', ["model 'm'", "field 'loading_feedback'", "'off'"]),
    ('[scheduler]\non_busy = "wait"', ["[scheduler]", "field 'on_busy'", "'queue', 'reject'"]),
    ("[scheduler]\nmax_start_failures = 0", ["field 'max_start_failures'", "at least 1"]),
    ("[scheduler]\ngpu_capacity = -1", ["field 'gpu_capacity'", "positive"]),
    ("[scheduler]\nqueue_timeout = 0", ["field 'queue_timeout'", "longer than zero"]),
    ('[[model]]\nid = "m"\nimage = "i"\nkeep_warm = true\nexclusive = true', ["keep_warm model cannot be exclusive"]),
    ('[[model]]\nid = "m"\nimage = "i"\nkeep_warm = "yes"', ["field 'keep_warm'", "true or false"]),
    (
        '[scheduler]\ngpu_capacity = 0.5\n[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 0.8',
        ["field 'gpu_memory'", "could never start"],
    ),
    ('[defaults]\nid = "x"', ["[defaults]", "'id' is per model"]),
    ('model = "x"', ["[[model]]"]),
    ('[waker]\nnetwork = "models"', ["'network' is set", "'model_ip_base' is needed"]),
    ('[waker]\nnetwork = "bad name!"', ["field 'network'", "Docker network name"]),
    ('[waker]\nnetwork = "m"\nmodel_ip_base = "172.30.1.300"', ["field 'model_ip_base'", "IPv4"]),
    ('[waker]\negress_network = "out"', ["'egress_network' needs 'network'"]),
    (
        (
            '[waker]\nnetwork = "m"\nmodel_ip_base = "255.255.255.255"\n[[model]]\nid = "a"\nimage = "i"\n'
            '[[model]]\nid = "b"\nimage = "i"'
        ),
        ["model 'b'", "leaves no address"],
    ),
    ('[[model]\nid = "m"', ["not valid TOML"]),
    ('[[model]]\nid = "m"\nimage = "i"\nsource = "github"', ["model 'm'", "field 'source'", "repo = ..."]),
    (
        '[[model]]\nid = "m"\nimage = "i"\nsource = { repo = "https://github.com/o/r", commit = "a686d89" }',
        ["field 'source'", "missing: file"],
    ),
    (
        (
            '[[model]]\nid = "m"\nimage = "i"\n'
            'source = { repo = "https://github.com/o/r", commit = "HEAD", file = "x.yml" }'
        ),
        ["model 'm'", "field 'source'", "commit", "hex"],
    ),
    (
        '[[model]]\nid = "m"\nimage = "i"\nsource = { repo = "github.com/o/r", commit = "a686d89", file = "f" }',
        ["field 'source'", "repository URL"],
    ),
    ('[[model]]\nid = "m"\nimage = "i"\npicks = ["coding", "poetry"]', ["field 'picks'", "'poetry'", "'ocr'"]),
    ('[[model]]\nid = "m"\nimage = "i"\nknown_issues = "none"', ["field 'known_issues'", "array"]),
    ('[[model]]\nid = "m"\nimage = "i"\nsleep = 3', ["model 'm'", "field 'sleep'", "0 (never sleep", "got 3"]),
    ('[[model]]\nid = "m"\nimage = "i"\nsleep = true', ["field 'sleep'", "got True"]),
    (
        '[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 0.3\nsleep = 1\nsleep_memory = 0.5',
        ["model 'm'", "field 'sleep_memory'", "more than the model's gpu_memory (0.3)", "(0 to 0.3)"],
    ),
    (
        '[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 0.3\nsleep = 1\nsleep_memory = -0.1',
        ["field 'sleep_memory'", "[0, 1]"],
    ),
    (
        '[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 0.3\nsleep_memory = 0.1',
        ["model 'm'", "field 'sleep_memory' has no effect with sleep = 0", "set sleep = 1 or 2"],
    ),
    ('[[model]]\nid = "m"\nimage = "i"\nwake_timeout = "5s"', ["field 'wake_timeout' has no effect"]),
    ('[[model]]\nid = "m"\nimage = "i"\nsleep = 2\nwake_timeout = 0', ["field 'wake_timeout'", "longer than zero"]),
    ('[[model]]\nid = "m"\nimage = "i"\nsleep = 2\nsleep_timeout = "later"', ["field 'sleep_timeout'", "duration"]),
    (
        '[[model]]\nid = "m"\nimage = "i"\nsleep = 1\ncommand = ["serve", "x"]',
        ["model 'm'", "sleep = 1 needs vLLM's --served-model-name in 'command'", "or set sleep = 0"],
    ),
    ("[scheduler]\nmax_wake_failures = 0", ["[scheduler]", "field 'max_wake_failures'", "at least 1"]),
    ('[scheduler]\nwake_timeout = "0s"', ["[scheduler]", "field 'wake_timeout'", "longer than zero"]),
    (
        '[[model]]\nid = "m"\nimage = "i"\nfixups = ["max_token"]',
        [
            "model 'm'",
            "field 'fixups'",
            "'max_token'",
            "'max_tokens'",
            "'strip_tools'",
            "'alternate_roles'",
            "'include_usage'",
            "'thinking'",
        ],
    ),
    ('[[model]]\nid = "m"\nimage = "i"\nfixups = "thinking"', ["field 'fixups'", "array"]),
    (
        '[[model]]\nid = "m"\nimage = "i"\nfixups = ["max_tokens"]',
        ["model 'm'", '"max_tokens" needs the model\'s context', "--max-model-len", "context_length"],
    ),
    (
        (
            '[[model]]\nid = "m"\nimage = "i"\ncommand = ["--max-model-len", "1024"]\ncontext_length = 2048\n'
            'fixups = ["max_tokens"]'
        ),
        ["model 'm'", "--max-model-len is 1024", "context_length 2048"],
    ),
    (
        '[[model]]\nid = "m"\nimage = "i"\ntools = true\nfixups = ["strip_tools"]',
        ["model 'm'", '"strip_tools"', "tools = true"],
    ),
    (
        '[[model]]\nid = "m"\nimage = "i"\nfixups = ["force_tools"]',
        ["model 'm'", '"force_tools"', "--tool-call-parser", "tools = true"],
    ),
    (
        '[[model]]\nid = "m"\nimage = "i"\nfixups = ["strip_tools", "tool_hints"]',
        ["model 'm'", '"tool_hints" rewrites the tools that "strip_tools" removes'],
    ),
]


@pytest.mark.parametrize("text, needles", BROKEN, ids=[n[-1][:40] for _, n in BROKEN])
def test_each_mistake_is_explained(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = "\n".join(caught.value.problems)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_sleep_settings_per_model_with_scheduler_defaults(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
        [scheduler]
        sleep_timeout = "30m"
        wake_timeout = "45s"
        max_wake_failures = 4
        [defaults]
        sleep_timeout = "2h"
        command = ["serve", "m", "--served-model-name", "m"]
        [[model]]
        id = "a"
        image = "i"
        gpu_memory = 0.5
        sleep = 2
        sleep_memory = 0.03
        [[model]]
        id = "b"
        image = "i"
        gpu_memory = 0.4
        sleep = 1
        wake_timeout = "10s"
        [[model]]
        id = "c"
        image = "i"
        gpu_memory = 0.2
    """,
        )
    )
    a, b, c = config.models
    assert config.scheduler.max_wake_failures == 4 and config.scheduler.wake_timeout == 45
    assert (int(a.sleep.level), a.sleep.memory, a.sleep.timeout, a.sleep.wake_timeout) == (2, 0.03, 7200, 45)
    # Without sleep_memory, a model is assumed to keep all it holds: the budget stays safe.
    assert (int(b.sleep.level), b.sleep.memory, b.sleep.wake_timeout) == (1, 0.4, 10)
    # [defaults] may carry sleep settings for every model without tripping the sleep = 0 ones.
    assert not c.sleep.enabled and c.sleep.timeout == 7200


def test_sleep_defaults():
    from waker.config.schema import parse_config

    config = parse_config({"model": [{"id": "m", "image": "i", "gpu_memory": 0.5}]}, Path("m.toml"))
    scheduler, model = config.scheduler, config.models[0]
    assert (scheduler.sleep_timeout, scheduler.wake_timeout, scheduler.max_wake_failures) == (3600, 120, 2)
    assert not model.sleep.enabled and int(model.sleep.level) == 0


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, '[[model]]\nid = "m"\ngpu_memory = 2\nport = 0\nwhat = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 4


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


@dataclass(frozen=True)
class Ran:
    """What a `waker` command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Ran:
    """`waker ARGS`, run in this process (so that coverage sees it; test_architecture runs the real
    entry point in a child): main() answers the exit code."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return Ran(code, out.getvalue(), err.getvalue())


def test_check_on_broken_config_exits_2_naming_file_model_and_field(tmp_path):
    path = write(tmp_path, '[[model]]\nid = "m"\nimage = "i"\ngpu_memory = 3\n')
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "model 'm'" in result.stderr and "field 'gpu_memory'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_on_good_config_prints_a_line_per_model(tmp_path):
    result = run_cli("check", "--config", str(write(tmp_path, ISSUE_EXAMPLE)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "2 model(s)" in lines[0]
    assert lines[1].strip().startswith("qwen2.5-1.5b-instruct (aliases: small)")
    assert lines[2].strip().startswith("gpt-oss-20b")


def test_resolved_config_is_toml_that_loads_to_the_same_config(tmp_path):
    original = load_config(write(tmp_path, ISSUE_EXAMPLE))
    result = run_cli("check", "--resolved", "--config", str(original.path))
    assert result.returncode == 0, result.stderr
    resolved = tomllib.loads(result.stdout)
    assert resolved["model"][0]["shm_size"] == "16g"
    assert resolved["model"][1]["idle_timeout"] == "0s"
    again_path = tmp_path / "again" / "models.toml"
    again_path.parent.mkdir()
    again_path.write_text(result.stdout)
    again = load_config(again_path)
    assert again.models == original.models
    assert again.gateway == original.gateway and again.scheduler == original.scheduler


def test_the_resolved_catalogue_reads_back_as_the_same_config(tmp_path):
    """Every setting is printed, defaults applied: the shipped catalogue (locally built images that are
    never pulled, the catalogue guide's fields) and a --set [gateway] setting read back the same."""
    catalogue, setting = (
        Path(__file__).resolve().parents[2] / "config" / "models.toml",
        "gateway.client_model_control=true",
    )
    result = run_cli("check", "--resolved", "--config", str(catalogue), "--set", setting)
    assert result.returncode == 0, result.stderr
    again = tmp_path / "models.toml"
    again.write_text(result.stdout)
    shipped, resolved = load_config(catalogue, (setting,)), load_config(again)
    assert resolved.models == shipped.models and resolved.disabled == shipped.disabled
    assert (resolved.gateway, resolved.scheduler) == (shipped.gateway, shipped.scheduler)


def test_resolved_config_keeps_the_sleep_settings(tmp_path):
    original = load_config(
        write(
            tmp_path,
            """
        [scheduler]
        wake_timeout = "30s"
        [[model]]
        id = "a"
        image = "i"
        command = ["serve", "a", "--served-model-name=a"]
        gpu_memory = 0.5
        sleep = 2
        sleep_memory = 0.03
        [[model]]
        id = "b"
        image = "i"
        gpu_memory = 0.3
    """,
        )
    )
    result = run_cli("check", "--resolved", "--config", str(original.path))
    assert result.returncode == 0, result.stderr
    again_path = tmp_path / "again" / "models.toml"
    again_path.parent.mkdir()
    again_path.write_text(result.stdout)
    again = load_config(again_path)
    assert again.models == original.models and again.scheduler == original.scheduler
    assert "sleep" not in tomllib.loads(result.stdout)["model"][1]


def test_shipped_config_is_valid():
    result = run_cli("check", "--config", str(Path(__file__).resolve().parents[2] / "config" / "models.toml"))
    assert result.returncode == 0, result.stderr


def test_models_doc_matches_the_catalogue():
    from waker.cli.model_docs import render

    root = Path(__file__).resolve().parents[2]
    expected = render(load_config(root / "config" / "models.toml"))
    assert (root / "docs" / "models.md").read_text() == expected, "run scripts/gen-models-doc"


def test_catalogue_covers_the_original_stack():
    config = load_config(Path(__file__).resolve().parents[2] / "config" / "models.toml")
    ids = {m.id for m in (*config.models, *config.disabled)}
    for expected in (
        "gpt-oss-20b",
        "gpt-oss-120b",
        "qwen2.5-1.5b-instruct",
        "qwen3-coder-30b-a3b-instruct",
        "glm-4.7-flash-awq",
        "llama-3.3-70b-instruct-fp4",
        "nemotron-3-nano-30b-nvfp4",
    ):
        assert expected in ids
    assert {"deepseek-ocr", "gemma4-26b-a4b", "qwen3.6-35b-a3b-fp8", "qwen3.5-0.8b"} <= ids
    assert "nemotron-3-nano-30b-nvfp4" in {m.id for m in config.disabled}


def test_the_catalogue_guide_fields_are_typed(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
        [[model]]
        id = "m"
        image = "i"
        source.repo = "https://github.com/jdaln/dgx-spark-inference-stack"
        source.commit = "a686d89"
        source.file = "compose/models-gpt.yml"
        best_for = "everyday chat"
        known_issues = ["no tools"]
        picks = ["chat", "opencode", "chat"]
        [[model]]
        id = "n"
        image = "i"
        """,
        )
    )
    m, n = config.models
    assert str(m.source) == "https://github.com/jdaln/dgx-spark-inference-stack a686d89 compose/models-gpt.yml"
    assert m.best_for == "everyday chat" and m.tradeoffs == "" and m.known_issues == ("no tools",)
    assert m.picks == ("chat", "opencode") and n.picks == () and n.source is None


def test_fixups_apply_in_one_order_and_max_tokens_uses_the_context_vllm_enforces(tmp_path):
    path = write(
        tmp_path,
        textwrap.dedent("""\
        [[model]]
        id = "a"
        image = "i"
        command = ["serve", "x", "--max-model-len=4096"]
        fixups = ["thinking_off", "thinking", "max_tokens", "thinking"]
        [[model]]
        id = "b"
        image = "i"
        context_length = 8192
        fixups = ["max_tokens"]
        [[model]]
        id = "c"
        image = "i"
        command = ["serve", "x", "--max-model-len", "2048"]
        """),
    )
    a, b, c = load_config(path).models
    assert [f.value for f in a.fixups] == ["max_tokens", "thinking", "thinking_off"] and model_context(a) == 4096
    assert model_context(b) == 8192
    assert c.fixups == () and model_context(c) == 2048


def test_resolved_config_keeps_the_fixups(tmp_path):
    path = write(
        tmp_path, '[[model]]\nid = "m"\nimage = "i"\ncontext_length = 512\nfixups = ["thinking", "max_tokens"]\n'
    )
    result = run_cli("check", "--resolved", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["model"][0]["fixups"] == ["max_tokens", "thinking"]


def test_models_reached_on_loopback_ports_or_at_fixed_addresses_in_a_network(tmp_path):
    text = '[[model]]\nid = "a"\nimage = "i"\n[[model]]\nid = "b"\nimage = "i"\nport = 8080\n'
    host = load_config(write(tmp_path, text))
    assert [str(m.address) for m in host.models] == ["127.0.0.1:18100", "127.0.0.1:18101"]
    network = load_config(write(tmp_path, '[waker]\nnetwork = "models"\nmodel_ip_base = "172.30.92.128"\n' + text))
    assert [str(m.address) for m in network.models] == ["172.30.92.128:8000", "172.30.92.129:8080"]


def test_set_overrides_deployment_settings_and_is_kept_for_reloads(tmp_path):
    path = write(tmp_path, '[gateway]\nlisten = "127.0.0.1:8009"\n[[model]]\nid = "a"\nimage = "i"\n')
    overrides = (
        "gateway.listen=0.0.0.0:8009",
        "gateway.allow_no_keys=true",
        "waker.network=models",
        "waker.model_ip_base=172.30.92.128",
        "scheduler.on_busy=reject",
    )
    config = load_config(path, overrides)
    assert str(config.gateway.listen) == "0.0.0.0:8009" and config.gateway.allow_no_keys is True
    assert str(config.models[0].address) == "172.30.92.128:8000" and config.scheduler.on_busy == "reject"
    assert config.overrides == overrides


@pytest.mark.parametrize(
    "override, needle",
    [
        ("gateway.listen", "expected SECTION.KEY=VALUE"),
        ("listen=1", "expected SECTION.KEY=VALUE"),
        ("model.image=x", "only gateway, waker, scheduler"),
        ("gateway.colour=red", "unknown field 'colour'"),
        ("gateway.allow_no_keys=maybe", "field 'allow_no_keys'"),
    ],
)
def test_bad_overrides_are_explained(tmp_path, override, needle):
    path = write(tmp_path, '[[model]]\nid = "a"\nimage = "i"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, (override,))
    assert needle in "\n".join(caught.value.problems)


def test_cli_takes_overrides_from_set_or_waker_set(tmp_path, monkeypatch):
    path = write(tmp_path, '[[model]]\nid = "a"\nimage = "i"\n')
    flag = run_cli("check", "--config", str(path), "--set", "gateway.listen=0.0.0.0:9000")
    assert flag.returncode == 0 and "gateway on 0.0.0.0:9000" in flag.stdout
    monkeypatch.setenv("WAKER_SET", "waker.listen=0.0.0.0:9001 x=1")
    env = run_cli("check", "--config", str(path))
    assert env.returncode == 2 and "--set 'x=1'" in env.stderr


def test_the_configuration_reference_documents_every_key():
    """docs/configuration.md is checked against the schema: each section's table lists each field."""
    from dataclasses import fields as dataclass_fields

    from waker.config.hosts import HOST_KEYS
    from waker.config.schema import (
        _MODEL_KEYS,
        GatewayConfig,
        ModelConfig,
        SchedulerConfig,
        WakerConfig,
    )

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    sections = {title: body for title, body in (part.split("\n", 1) for part in doc.split("\n## ")[1:])}

    def documented(heading: str) -> set[str]:
        body = next(b for t, b in sections.items() if t.startswith(heading))
        first_cells = re.findall(r"^\| ((?:`[a-z_]+`(?:, )?)+) \|", body, re.MULTILINE)
        return {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}

    computed = {"address", "ray"}  # derived from host_port or model_ip_base; ray_port and worker_command
    secrets_from_files = {"api_keys_file", "admin_token_file", "hf_token_file"}
    expected = {
        "`[gateway]`": {f.name for f in dataclass_fields(GatewayConfig)} | {"api_keys_file"},
        "`[waker]`": {f.name for f in dataclass_fields(WakerConfig)} | {"admin_token_file", "hf_token_file"},
        "`[scheduler]`": {f.name for f in dataclass_fields(SchedulerConfig)},
        "`[[model]]`": (_MODEL_KEYS | {f.name for f in dataclass_fields(ModelConfig)}) - computed,
        "`[[host]]`": HOST_KEYS,
    }
    for heading, keys in expected.items():
        assert documented(heading) == keys, heading
    assert secrets_from_files <= documented("`[gateway]`") | documented("`[waker]`")


def test_the_demo_model_runs_without_a_gpu_and_keeps_its_download():
    """The README's first request: the CPU demo cannot run here (no registry, no model hub), so its
    config is what is checked: llama.cpp's server, no GPU request or budget, health and port as that
    server has them, the download kept in data/, and its port the one it was appended with (a9890b8):
    models added since come after it, so that no model's port moves."""
    config = load_config(Path(__file__).resolve().parents[2] / "config" / "models.toml")
    demo = config.model("demo-cpu")
    assert demo.image.startswith("ghcr.io/ggml-org/llama.cpp:server") and demo.entrypoint == ("/app/llama-server",)
    assert demo.gpus == "" and demo.gpu_memory == 0 and not demo.exclusive

    def after(flag: str) -> str:
        return demo.command[demo.command.index(flag) + 1]

    assert demo.port == 8080 and after("--port") == "8080"
    assert demo.health == "/health" and "-hf" in demo.command and after("--alias") == "demo-cpu"
    cache = dict(demo.env)["LLAMA_CACHE"]
    assert any(v.endswith(f"/data/llama.cpp:{cache}") for v in demo.volumes)
    assert demo.host_port == 18132


@pytest.mark.parametrize(
    "listen, reached",
    [
        ("0.0.0.0:18080", "127.0.0.1:18080"),
        (":18080", "127.0.0.1:18080"),
        ("[::]:18080", "[::1]:18080"),
        ("10.1.2.3:18080", "10.1.2.3:18080"),
        ("[fd00::5]:18080", "[fd00::5]:18080"),
    ],
)
def test_a_wildcard_listen_address_is_reached_on_loopback(listen, reached):
    assert str(address(listen).reachable()) == reached


def test_check_shows_the_footprints_learned_and_flags_one_that_exceeds_what_it_declares(tmp_path):
    state = tmp_path / "state"
    text = f'[waker]\nstate_dir = "{state}"\n' + "".join(
        f'[[model]]\nid = "{m}"\nimage = "i"\n{extra}\n'
        for m, extra in (("small", 'memory = "4GiB"'), ("big", 'memory = "20GiB"'), ("new", ""))
    )
    path = write(tmp_path, text)
    ThisMachine(state).remember({"small": 5 * 2**30, "big": 18 * 2**30, "gone": 2**30})

    plain = run_cli("check", "--config", str(path)).stdout
    assert "small: i, " in plain and plain.count("learned") == 2
    assert "learned 5.0 GiB, declares 4.0 GiB: takes more than it declares" in plain
    assert "learned 18.0 GiB, declares 20.0 GiB\n" in plain
    resolved = run_cli("check", "--resolved", "--config", str(path)).stdout
    assert resolved.endswith(
        f"# Footprints learned at the models' starts ({state / 'footprints.json'}); admission counts the "
        "larger of `memory` and this:\n"
        "#   small: learned 5.0 GiB, declares 4.0 GiB: takes more than it declares\n"
        "#   big: learned 18.0 GiB, declares 20.0 GiB\n"
    )
    assert [m["id"] for m in tomllib.loads(resolved)["model"]] == ["small", "big", "new"]  # still a config file
