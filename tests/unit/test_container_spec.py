from pathlib import Path

from waker.config.schema import parse_config
from waker.docker.spec import (
    LABEL_EGRESS,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_SPEC,
    LABEL_STACK,
    container_name,
    container_spec,
    served_names_command,
)


def model(waker=None, **keys):
    raw = {"model": [{"id": "qwen:7b", "image": "img:1", **keys}], "waker": waker or {}}
    return parse_config(raw, Path("/etc/waker/models.toml")).models[0]


def test_spec_carries_everything_the_config_says():
    spec = container_spec(
        model(
            command=["serve", "x"],
            env={"A": "1"},
            volumes=["/data:/models:ro"],
            gpus="all",
            shm_size="16g",
            ulimits={"memlock": -1},
            port=8001,
        ),
        "spark",
    )
    host = spec["HostConfig"]
    assert spec["Image"] == "img:1" and spec["Cmd"] == ["serve", "x"] and spec["Env"] == ["A=1"]
    assert host["PortBindings"] == {"8001/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18100"}]}
    assert host["Binds"] == ["/data:/models:ro"] and host["ShmSize"] == 16 * 1024**3
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Capabilities": [["gpu"]], "Count": -1}]
    assert host["Ulimits"] == [{"Name": "memlock", "Soft": -1, "Hard": -1}]
    assert host["RestartPolicy"] == {"Name": "no"}
    labels = spec["Labels"]
    assert labels[LABEL_MANAGED] == "true" and labels[LABEL_STACK] == "spark" and labels[LABEL_MODEL] == "qwen:7b"


def test_no_gpu_request_without_gpus_and_device_ids_when_listed():
    assert "DeviceRequests" not in container_spec(model(), "s")["HostConfig"]
    request = container_spec(model(gpus="0,1"), "s")["HostConfig"]["DeviceRequests"][0]
    assert request["DeviceIDs"] == ["0", "1"] and "Count" not in request


def test_spec_hash_changes_with_the_spec_only():
    base = container_spec(model(), "s")["Labels"][LABEL_SPEC]
    assert container_spec(model(), "s")["Labels"][LABEL_SPEC] == base
    assert container_spec(model(env={"X": "1"}), "s")["Labels"][LABEL_SPEC] != base
    assert container_spec(model(image="img:2"), "s")["Labels"][LABEL_SPEC] != base


def test_container_names_are_docker_legal_and_distinct():
    assert container_name("spark", "gpt-oss-20b") == "spark-gpt-oss-20b"
    colon, underscore = container_name("spark", "qwen:7b"), container_name("spark", "qwen_7b")
    assert ":" not in colon and colon != underscore


def test_in_a_network_the_model_publishes_nothing_and_has_its_fixed_address():
    networked = model(waker={"network": "models", "model_ip_base": "172.30.92.128"})
    spec = container_spec(networked, "s", "models", "egress")
    assert "PortBindings" not in spec["HostConfig"] and spec["HostConfig"]["NetworkMode"] == "models"
    assert spec["NetworkingConfig"] == {"EndpointsConfig": {"models": {"IPAMConfig": {"IPv4Address": "172.30.92.128"}}}}
    assert spec["Labels"][LABEL_EGRESS] == "egress"
    without_egress = container_spec(networked, "s", "models")
    assert LABEL_EGRESS not in without_egress["Labels"]
    assert without_egress["Labels"][LABEL_SPEC] != spec["Labels"][LABEL_SPEC]


def test_a_vllm_command_serves_the_aliases_too_and_any_name_on_its_path():
    spec = container_spec(
        model(
            aliases=["q", "talk"],
            env={"A": "1"},
            command=["serve", "Qwen/Q", "--served-model-name", "qwen:7b", "--port", "8000"],
        ),
        "s",
    )
    assert spec["Cmd"] == ["serve", "Qwen/Q", "--served-model-name", "qwen:7b", "q", "talk", "--port", "8000"]
    assert spec["Env"] == ["A=1", "VLLM_SKIP_MODEL_NAME_VALIDATION=1"]


def test_served_names_keep_the_given_ones_first_in_either_flag_form():
    names = ("m", "alias")
    assert served_names_command(("serve", "x", "--served-model-name=other"), names) == (
        "serve",
        "x",
        "--served-model-name",
        "other",
        "m",
        "alias",
    )
    assert served_names_command(("serve", "--served-model-name", "alias", "m"), names) == (
        "serve",
        "--served-model-name",
        "alias",
        "m",
    )
    assert served_names_command(("serve", "x"), names) == ("serve", "x")  # not vLLM's flag: left alone


def test_an_explicit_name_validation_setting_is_kept_and_other_servers_are_left_alone():
    kept = container_spec(
        model(env={"VLLM_SKIP_MODEL_NAME_VALIDATION": "0"}, command=["serve", "x", "--served-model-name", "m"]), "s"
    )
    assert kept["Env"] == ["VLLM_SKIP_MODEL_NAME_VALIDATION=0"]
    llama_cpp = container_spec(model(aliases=["q"], command=["-m", "/m.gguf", "--alias", "m"]), "s")
    assert llama_cpp["Cmd"] == ["-m", "/m.gguf", "--alias", "m"] and llama_cpp["Env"] == []


def test_a_sleeping_model_gets_dev_mode_and_on_gpus_vllm_sleep_mode():
    serve = ["serve", "Qwen/Q", "--served-model-name", "qwen:7b"]
    on_gpu = container_spec(model(command=serve, gpus="all", gpu_memory=0.5, sleep=1), "s")
    assert on_gpu["Cmd"] == [*serve, "--enable-sleep-mode"] and "VLLM_SERVER_DEV_MODE=1" in on_gpu["Env"]
    # vLLM refuses --enable-sleep-mode without sleep support (its CPU build): dev mode alone still
    # pauses and resumes the engine there.
    on_cpu = container_spec(model(command=serve, sleep=2), "s")
    assert on_cpu["Cmd"] == serve and "VLLM_SERVER_DEV_MODE=1" in on_cpu["Env"]
    given = container_spec(model(command=[*serve, "--enable-sleep-mode"], gpus="all", sleep=1), "s")
    assert given["Cmd"].count("--enable-sleep-mode") == 1


def test_dev_mode_is_forced_on_for_a_sleeping_model_and_never_added_otherwise():
    forced = container_spec(
        model(env={"VLLM_SERVER_DEV_MODE": "0"}, command=["serve", "x", "--served-model-name", "m"], sleep=1), "s"
    )
    assert "VLLM_SERVER_DEV_MODE=1" in forced["Env"]
    serve = ["serve", "x", "--served-model-name=m"]
    plain = container_spec(model(command=serve, gpus="all"), "s")
    assert plain["Env"] == ["VLLM_SKIP_MODEL_NAME_VALIDATION=1"] and "--enable-sleep-mode" not in plain["Cmd"]
    assert (
        plain["Labels"][LABEL_SPEC]
        != container_spec(model(command=serve, gpus="all", sleep=1), "s")["Labels"][LABEL_SPEC]
    )
