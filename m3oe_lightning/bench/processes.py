"""Child processes of a bench or a test: free local ports, starting in a process group, stopping one whole.

Servers here (``mlflow models serve``, a Flower SuperLink, ``m3oe-site``) start children of their own; each
is started in a session of its own so that stopping it stops every process it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_group(command: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.Popen:
    """``command`` in a new session (its own process group), stdout and stderr appended to ``log``."""
    with open(log, "ab") as handle:
        return subprocess.Popen(list(command), stdout=handle, stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                cwd=cwd, start_new_session=True)


def stop_group(process: subprocess.Popen, *, grace_s: float = 30.0) -> int:
    """SIGTERM to the process's whole group, SIGKILL if it lingers; its exit code."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def group_alive(pid: int) -> bool:
    """Whether any process of the group ``pid`` leads is still running."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_port(port: int, *, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Until something accepts connections on 127.0.0.1:``port`` (``process`` exiting first is an error)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")
