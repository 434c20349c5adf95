"""The ssh command line for an ssh:// Docker host: the docker CLI's, never a prompt (tests/e2e/
test_remote_docker.py runs it against a real sshd)."""

from waker.docker.connect import ssh_command


def test_user_and_port_go_to_ssh_and_the_remote_docker_bridges_its_socket():
    assert ssh_command("ssh://admin@spark2:2222") == [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-T",
        "-l",
        "admin",
        "-p",
        "2222",
        "--",
        "spark2",
        "docker",
        "system",
        "dial-stdio",
    ]


def test_without_user_or_port_the_ssh_config_decides():
    assert ssh_command("ssh://spark2")[-5:] == ["--", "spark2", "docker", "system", "dial-stdio"]
    assert "-l" not in ssh_command("ssh://spark2") and "-p" not in ssh_command("ssh://spark2")
