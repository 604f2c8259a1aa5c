"""Lab daemons: started detached, with a pid file and a log under .lab/."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .layout import Lab


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat from its third field on (state, ...), past the command name; [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return []


def pid_alive(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot): a pid reused by another process
    after ours exited has a different one."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def running(lab: Lab, name: str) -> int | None:
    """Our daemon's pid, if that very process still runs (not a later one given its pid,
    as after another checkout's `lab down` cleared the machine)."""
    pid = read_pid(lab.pids / f"{name}.pid")
    try:
        started = (lab.pids / f"{name}.started").read_text().strip()
    except FileNotFoundError:
        return pid
    return pid if pid and start_time(pid) == started else None


def command_line(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return None


def start(lab: Lab, name: str, argv: Sequence[str], env: dict | None = None) -> int:
    """Start `argv` in its own session so it outlives `kopfvirt-lab up`."""
    lab.pids.mkdir(parents=True, exist_ok=True)
    lab.logs.mkdir(parents=True, exist_ok=True)
    with open(lab.logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, **(env or {})}, cwd=lab.repo,
        )
    (lab.pids / f"{name}.started").write_text(f"{start_time(proc.pid)}\n")
    (lab.pids / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def kill(pid: int, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def stop(lab: Lab, name: str, grace: float = 10.0) -> None:
    pid = running(lab, name)
    if pid:
        kill(pid, grace)
    (lab.pids / f"{name}.pid").unlink(missing_ok=True)
    (lab.pids / f"{name}.started").unlink(missing_ok=True)


def log_tail(lab: Lab, name: str, lines: int = 15) -> str:
    try:
        return "\n".join((lab.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def port_in_use(port: int) -> str | None:
    """Who listens on a TCP port, or None. Reads /proc so it needs no extra tools."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    return f"pid {proc.name} ({cmd[:80]})"
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return "an unknown process"


def run(argv: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, text=True, capture_output=True, **kwargs)
