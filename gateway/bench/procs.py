"""Starting, polling and stopping the benchmark's processes: the fake upstream, the gateway (as its
users start it: ``python -m gateway serve``) and the load generator. Loopback only, ports chosen at
run time, readiness polled, and everything stopped on the way out (``Procs`` is a context manager;
the children also get SIGTERM from the kernel if the benchmark itself dies).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from . import procstat
from .loadgen import LoadGen

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]


class BenchError(RuntimeError):
    """Something the benchmark needs did not start or answer; the message says what and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _child_setup() -> None:  # runs in the child between fork and exec
    os.setsid()  # our own Ctrl-C handling stops it, in order
    try:  # die with the benchmark, whatever happens to it (Linux)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    procstat.raise_fd_limit()  # 1,000 streams need ~2,000 descriptors in the gateway


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])


class Procs:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="gateway-bench-")
        self.dir = Path(self._dir.name)
        self._children: list[Child] = []
        self._loadgens: list[LoadGen] = []

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the fake upstream ----------------------------------------------------------------------

    def upstream(self, max_seconds: float = 7200.0) -> Child:
        return self._ready_child("upstream", "the fake upstream", ["gateway.bench.upstream", "--max-seconds",
                                                                    str(max_seconds)])

    def floor(self, upstream_url: str) -> Child:
        """The bare aiohttp relay (``gateway.bench.floor``) in front of ``upstream_url``."""
        return self._ready_child("floor", "the floor relay", ["gateway.bench.floor", "--upstream", upstream_url])

    def _ready_child(self, name: str, what: str, module_args: list[str]) -> Child:
        """``python -m <module_args> --host HOST --port 0``, which prints ``READY <port>`` once it
        listens and exits when its stdin (held here) closes."""
        log = self.dir / f"{name}.log"
        cmd = [sys.executable, "-m", *module_args, "--host", HOST, "--port", "0"]
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                    cwd=self.dir, env=_env(), preexec_fn=_child_setup)
        child = Child(name, proc, "", log)
        self._children.append(child)
        assert proc.stdout is not None
        line = _readline(proc.stdout, 20.0)
        if not line.startswith(b"READY "):
            raise BenchError(f"{what} did not start (said {line!r}):\n{child.log_tail()}")
        child.url = f"http://{HOST}:{int(line.split()[1])}"
        return child

    # --- the gateway ----------------------------------------------------------------------------

    def gateway(self, base_url: str, workers: Optional[int] = None, name: str = "gateway",
                overrides: Sequence[str] = (), checkout: Optional[Path] = None,
                data_dir: Optional[Path] = None) -> Child:
        """``overrides``: more ``key=value`` settings, e.g. ``gateway.idle_timeout_s=5``;
        ``checkout``: another copy of the repository to run (``gateway.bench.ab``), else this one;
        ``data_dir``: where it stores responses (by default one directory for every gateway)."""
        repo = Path(checkout).resolve() if checkout is not None else REPO
        config = repo / "config" / "vllm_model.yaml"
        port = free_port()
        log = self.dir / f"{name}-{port}.log"
        cmd = [sys.executable, "-m", "gateway", "serve", "--base-url", base_url, "--model", "bench", "--api-key=",
               "--host", HOST, "--port", str(port), "gateway.log_level=WARNING",
               f"gateway.data_dir={data_dir or self.dir / 'store'}", *overrides]  # stored responses: not in $HOME
        if config.exists():
            cmd[4:4] = ["--config", str(config)]
        if workers is not None:
            cmd[4:4] = ["--workers", str(workers)]
        with open(log, "wb") as out:
            # cwd: an empty directory, so that no stray ./env.yaml changes the configuration.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.dir, env=_env(repo), preexec_fn=_child_setup)
        child = Child(name, proc, f"http://{HOST}:{port}", log)
        self._children.append(child)
        self._wait_healthy(child, expected_processes=1 + (workers or 1) if (workers or 1) > 1 else 1)
        return child

    def _wait_healthy(self, child: Child, expected_processes: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise BenchError(f"{child.name} exited with status {child.proc.returncode} while starting "
                                 f"({' '.join(child.proc.args)}):\n{child.log_tail()}")
            try:
                with urllib.request.urlopen(child.url + "/health", timeout=2.0) as resp:
                    if resp.status == 200 and len(procstat.tree(child.pid)) >= expected_processes:
                        return
                    last = f"HTTP {resp.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.1)
        raise BenchError(f"{child.name} did not answer /health with 200 within {timeout:.0f} s (last: {last}):\n"
                         f"{child.log_tail()}")

    # --- a viewer of the inspector (the inspect section) ------------------------------------------

    def viewer(self, gateway_url: str, admin_key: str) -> Child:
        log = self.dir / "viewer.log"
        cmd = [sys.executable, "-m", "gateway.bench.viewer", gateway_url, admin_key]
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                    cwd=self.dir, env=_env(), preexec_fn=_child_setup)
        child = Child("viewer", proc, gateway_url, log)
        self._children.append(child)
        assert proc.stdout is not None
        if _readline(proc.stdout, 20.0) != b"READY":
            raise BenchError(f"the inspector viewer did not start:\n{child.log_tail()}")
        return child

    @staticmethod
    def viewer_stats(child: Child) -> dict[str, int]:
        assert child.proc.stdin is not None and child.proc.stdout is not None
        child.proc.stdin.write(b"stats\n")
        child.proc.stdin.flush()
        line = _readline(child.proc.stdout, 20.0)
        stats = json.loads(line) if line else {"fatal": "no answer"}
        if "fatal" in stats:
            raise BenchError(f"the inspector viewer failed: {stats['fatal']}\n{child.log_tail()}")
        return stats

    # --- the load generator ---------------------------------------------------------------------

    def loadgen(self) -> LoadGen:
        lg = LoadGen()
        self._loadgens.append(lg)
        return lg

    # --- stopping -------------------------------------------------------------------------------

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        pids = procstat.tree(child.pid)
        if child.proc.poll() is None:
            if child.proc.stdin is not None:
                try:
                    child.proc.stdin.close()
                except OSError:
                    pass
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
        for pid in pids[1:]:  # workers left behind by a parent that did not stop them
            if os.path.exists(f"/proc/{pid}"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if child in self._children:
            self._children.remove(child)

    def close(self) -> None:
        for lg in self._loadgens:
            lg.close()
        self._loadgens.clear()
        for child in reversed(list(self._children)):
            self.stop(child)
        self._dir.cleanup()


def _env(repo: Path = REPO) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _readline(stream: "subprocess.IO[bytes]", timeout: float) -> bytes:  # type: ignore[name-defined]
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return stream.readline().strip()


def workers_supported() -> bool:
    """Does ``vllm-gateway serve`` take ``--workers``?"""
    out = subprocess.run([sys.executable, "-m", "gateway", "serve", "--help"], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), env=_env(), timeout=60)
    return "--workers" in out.stdout
