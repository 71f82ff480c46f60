"""Servers as detached process groups: start, wait until ready, stop by PID, never by name.

Each server runs as the leader of its own session, so stopping its group also stops every child it forked
(mlflow's uvicorn workers, a Ray node's raylet and workers) and nothing else on the machine: `ray stop --force`
would end every Ray node of every user. A PID is recorded with its start time, so a PID the kernel reused for
another program is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from lic.errors import LicError


@dataclass(frozen=True)
class Launch:
    """A server to start: its command line and environment, where it logs, and how to tell it is ready."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    ready: Callable[[], bool]
    timeout_s: float


@dataclass(frozen=True)
class Process:
    """A process group this project started: the leader's PID and start time."""

    pid: int
    create_time: float

    def leader(self) -> psutil.Process | None:
        """The leader if it still runs (the same process, not a reused PID), else None."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.01 or _finished(process):
                return None
            return process
        except psutil.NoSuchProcess:
            return None

    def members(self) -> list[psutil.Process]:
        """Every live process of the group: the leader and what it forked, also after the leader exited.

        Linux does not hand out a PID that is still some group's ID, so a group with this ID and no leader is
        what is left of ours; a live process with this PID and another start time is somebody else's.
        """
        try:
            if abs(psutil.Process(self.pid).create_time() - self.create_time) > 0.01:
                return []
        except psutil.NoSuchProcess:
            pass
        members = []
        for process in psutil.process_iter():
            try:
                if os.getpgid(process.pid) == self.pid and not _finished(process):
                    members.append(process)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return members


def _finished(process: psutil.Process) -> bool:
    """True for a process that exited: gone, or a zombie (reaped here when it is our child)."""
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            return False
        with contextlib.suppress(psutil.TimeoutExpired, psutil.NoSuchProcess, ChildProcessError):
            process.wait(timeout=0)
        return True
    except psutil.NoSuchProcess:
        return True


def start(launch: Launch) -> Process:
    """Start `launch` detached in a session of its own, output to its log; returns without waiting."""
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    with launch.log.open("ab") as log:
        child = subprocess.Popen(
            launch.args,
            env=launch.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(child.pid, psutil.Process(child.pid).create_time())


def wait_ready(launch: Launch, process: Process) -> None:
    """Poll `launch.ready` until it holds; a server that exits or stays unready is an error naming its log."""
    deadline = time.monotonic() + launch.timeout_s
    while not launch.ready():
        if process.leader() is None:
            raise LicError(f"{launch.name} exited before it was ready; see {launch.log}:\n{tail(launch.log)}")
        if time.monotonic() > deadline:
            raise LicError(f"{launch.name} was not ready after {launch.timeout_s:.0f} s; see {launch.log}")
        time.sleep(0.3)


def stop(processes: list[Process], timeout_s: float = 30.0) -> None:
    """SIGTERM every group, wait for all of them together, then SIGKILL what is left."""
    groups = {process.pid: process.members() for process in processes}
    for pgid, members in groups.items():
        if members:
            _signal_group(pgid, signal.SIGTERM)
    if _wait_finished(groups.values(), timeout_s):
        return
    for pgid, members in groups.items():
        if _still_running(members):
            _signal_group(pgid, signal.SIGKILL)
    if not _wait_finished(groups.values(), 10):
        left = sorted(member.pid for members in groups.values() for member in members if not _finished(member))
        raise LicError(f"processes {left} survived SIGKILL")


def _wait_finished(groups: Iterable[list[psutil.Process]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(_still_running(members) for members in groups):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _still_running(members: list[psutil.Process]) -> bool:
    return any(not _finished(member) for member in members)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def answers_http(url: str) -> Callable[[], bool]:
    """A readiness check: `url` answers with a status below 500."""

    def ready() -> bool:
        try:
            return requests.get(url, timeout=2).status_code < 500
        except requests.RequestException:
            return False

    return ready


def log_says(log: Path, text: str) -> Callable[[], bool]:
    """A readiness check: the server printed `text` (for servers without an HTTP endpoint, like `ray start`)."""
    return lambda: log.exists() and text in log.read_text(errors="replace")


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def port_in_use(port: int) -> bool:
    """True when a listener holds `port` on any address (Ray's GCS listens on all of them)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
