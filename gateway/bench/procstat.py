"""CPU time and memory of a process and all its descendants, read from ``/proc`` (Linux).

A gateway started with ``--workers N`` is a parent and N children; a figure "of the gateway" is the
sum over that tree. Children are found through ``/proc/<pid>/task/<tid>/children`` (every thread's
list, recursively). CPU is ``utime + stime`` from ``/proc/<pid>/stat`` (whole process, all threads,
in clock ticks, usually 10 ms; a measurement window of seconds makes that negligible).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Optional

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/stat")


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen or not os.path.exists(f"/proc/{p}"):
            continue
        seen.append(p)
        todo += children(p)
    return seen


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15 of stat)


def _status_kb(pid: int, key: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    """Resident set size now (``VmRSS``), in KiB."""
    return _status_kb(pid, b"VmRSS:")


def peak_rss_kb(pid: int) -> int:
    """Highest resident set size since the process started (``VmHWM``), in KiB."""
    return _status_kb(pid, b"VmHWM:")


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, every process and the kernel) since boot:
    what is not idle or iowait in ``/proc/stat``. Minus our processes' time, it is the other load."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / _TICK


def listen_overflows() -> int:
    """Connections the kernel dropped since boot because a listening socket's accept queue was
    full (``TcpExt: ListenOverflows`` in ``/proc/net/netstat``; the whole machine)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:") and "ListenOverflows" in names.split():
            return int(values.split()[names.split().index("ListenOverflows")])
    return 0


def accept_queue(port: int) -> int:
    """Connections waiting to be accepted on the IPv4 socket listening on ``port``, from
    ``/proc/net/tcp`` (listening sockets come first there: the read stops after them)."""
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] != "0A":  # past the listening sockets
                    break
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return int(fields[4].split(":")[1], 16)  # tx_queue:rx_queue; rx_queue = waiting
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return 0


def listen_backlog(port: int) -> Optional[int]:
    """The backlog of the socket listening on ``port`` (``ss -ltn``: Send-Q), None if unknown."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5).stdout
        return int(out.split()[2])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


@dataclass
class TreeSample:
    pids: list[int]
    cpu_s: float
    rss_kb: int
    hwm_kb: int  # sum over processes of each one's own peak


def sample(pid: int) -> TreeSample:
    pids = tree(pid)
    return TreeSample(
        pids=pids,
        cpu_s=sum(cpu_seconds(p) for p in pids),
        rss_kb=sum(rss_kb(p) for p in pids),
        hwm_kb=sum(peak_rss_kb(p) for p in pids),
    )


def raise_fd_limit() -> None:
    """The soft limit of open files up to the hard one (1,000 streams need that many sockets)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else hard
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass
