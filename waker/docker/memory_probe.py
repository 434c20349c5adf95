"""The memory probe: a small container the waker keeps on a host it reaches only through Docker (the
second Spark of a pair), printing the host's /proc/meminfo twice a second. A container sees the
host's figures there (no lxcfs on these machines), and its output is read back through the engine,
so a remote host's memory needs nothing but its Docker engine.

It needs no image of its own (none can be pulled on every network): any image with /bin/sh and
`sleep` does, and a host running models has theirs. It runs as nobody, without network,
capabilities or a writable root, and never with a GPU; its log is capped at 2 MiB."""

from __future__ import annotations

from typing import Any

from waker.core.memory import PROBE_END

# Its stack, on a label of its own: not io.waker.stack, which names the stack's models' containers.
LABEL_PROBE = "io.waker.memory-probe"
PERIOD = "0.5"  # seconds between readings: the guard samples at most this often while a start runs
# Only shell built-ins and `sleep`: the host's uptime (which tells one reading from the next), the
# four figures the guard needs, and the end mark.
SCRIPT = (
    "while :; do read up idle < /proc/uptime; echo uptime $up; "
    "while read key value unit; do case $key in "
    'MemTotal:|MemFree:|MemAvailable:|SwapFree:) echo "$key $value $unit";; esac; done < /proc/meminfo; '
    f"echo {PROBE_END}; sleep {PERIOD}; done"
)
TAIL = 20  # log lines read at each sample: more than two whole readings


def probe_name(stack: str) -> str:
    return f"{stack}-memory-probe"


def probe_spec(stack: str, image: str) -> dict[str, Any]:
    return {
        "Image": image,
        "Entrypoint": ["/bin/sh", "-c", SCRIPT],
        "Cmd": [],
        "User": "65534:65534",
        "Labels": {LABEL_PROBE: stack},
        # An image made for the GPU asks NVIDIA's runtime for every GPU by this variable.
        "Env": ["NVIDIA_VISIBLE_DEVICES=void"],
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none",
            "RestartPolicy": {"Name": "unless-stopped"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}},
            "Memory": 64 * 1024**2,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "ReadonlyRootfs": True,
        },
    }
