"""Start, find and stop the background server processes that `carebus up` owns.

A pid file records each process we start, together with a marker from its command line, so
`down` never signals a process it did not start even if the pid was reused.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running_pid(pid_file: Path, marker: str | tuple[str, ...]) -> int | None:
    """The pid in pid_file if that process is alive and is still ours (its command line holds a marker)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    cmd = _cmdline(pid)
    if not cmd:
        # An empty command line is either a zombie (dead) or a process caught mid-execve
        # (the java launcher re-executes itself), which is alive and ours.
        return pid if _state(pid) not in ("", "Z", "X") else None
    markers = (marker,) if isinstance(marker, str) else marker
    if not any(m in cmd for m in markers):
        return None
    return pid


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]


def start(cmd: list[str], pid_file: Path, log_file: Path, env: dict[str, str] | None = None) -> int:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop(pid_file: Path, marker: str | tuple[str, ...], timeout: float = 30.0, hard: bool = False) -> bool:
    """Stop our process; SIGTERM lets Kafka and Redis flush cleanly. hard=True simulates a crash."""
    pid = running_pid(pid_file, marker)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(pid_file, marker) is not None:
        _reap(pid)
        time.sleep(0.1)
    if running_pid(pid_file, marker) is not None:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    _reap(pid)
    pid_file.unlink(missing_ok=True)
    return True


def stop_children(procs: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM every child we started, then wait for each (SIGKILL if it outstays `timeout`)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def _reap(pid: int) -> None:
    # A child of this very process stays a zombie (and "alive" in /proc) until waited on.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def wait_http_ready(url: str, timeout: float = 90.0) -> None:
    """Poll a service's readiness endpoint until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not become ready within {timeout:.0f}s")
