"""Where the gateway's CPU goes: the bench's relay load, with py-spy sampling the gateway.

    python -m gateway.bench.profile                          # c=64, 10 s, default config
    python -m gateway.bench.profile --concurrency 1 gateway.store=false
    python -m gateway.bench.profile --raw profile.txt        # also py-spy's collapsed stacks

The same processes as ``--only relay`` (a fake vLLM in burst mode, ``vllm-gateway serve`` started as
users start it, the load generator), plus ``py-spy record`` attached to the gateway for the
measured window. Prints the functions holding the most samples, by their own time and with what
they call, summed over the gateway's threads (the store's writer thread included: its CPU is the
gateway's too). Needs py-spy (``pip install -e '.[profile]'``) and permission to trace the
gateway's process (the bench starts it, so the default ptrace rules allow it).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

from .loadgen import Spec
from .procs import BenchError, Procs
from .workload import Workload


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="gateway settings, as on `vllm-gateway serve` (e.g. gateway.store=false)")
    parser.add_argument("--concurrency", type=int, default=64, help="streams at once (default 64)")
    parser.add_argument("--seconds", type=float, default=10.0, help="sampled seconds (default 10)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per response (default 256)")
    parser.add_argument("--mix", default="text", choices=["text", "reasoning", "tools", "mixed"])
    parser.add_argument("--top", type=int, default=30, help="rows per table (default 30)")
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (py-spy --gil): a thread waiting for the GIL "
                             "is not counted as busy where it waits")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks in this file")
    parser.add_argument("--from-raw", type=Path, metavar="FILE",
                        help="no load: report on collapsed stacks kept earlier with --raw")
    args = parser.parse_args(argv)

    if args.from_raw:
        print(report(args.from_raw.read_text(), args.top, {}))
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(py_spy):
        parser.error("py-spy is not installed: pip install -e '.[profile]'")
    workload = Workload(mix=args.mix, tokens=args.tokens, tokens_per_chunk=1)
    raw = args.raw or Path(os.devnull)
    with Procs() as procs:
        upstream = procs.upstream()
        prefix = f"/w/{args.mix}/{args.tokens}/1"
        gateway = procs.gateway(upstream.url + prefix + "/v1", overrides=args.overrides)
        out = procs.dir / "py-spy.txt"
        loadgen = procs.loadgen()
        spec = Spec(url=gateway.url + "/v1/responses", body=workload.responses_request(), protocol="responses",
                    concurrency=args.concurrency, duration=args.seconds + 2.0, warmup=1.0,
                    watch={"gateway": gateway.pid})
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(loadgen.run(spec)), daemon=True)
        load.start()
        threading.Event().wait(1.5)  # the warm-up: the load is steady before sampling starts
        before = thread_cpu(gateway.pid)
        spy = subprocess.run([py_spy, "record", "--pid", str(gateway.pid), "--duration", str(int(args.seconds)),
                              "--rate", str(args.rate), "--format", "raw", "--output", str(out), "--nonblocking"]
                             + (["--gil"] if args.gil else []),
                             capture_output=True, text=True)
        after = thread_cpu(gateway.pid)
        load.join()
        if spy.returncode != 0 or not out.exists():
            raise BenchError(f"py-spy failed: {spy.stderr.strip() or spy.stdout.strip()}")
        if args.raw:
            shutil.copy(out, raw)
        print(report(out.read_text(), args.top, result))
        print(threads_report(before, after))
    return 0


# Where a sample's time goes: the first rule that matches, from the innermost frame outwards.
AREAS = [
    ("gateway/store/", "the response store"),
    ("gateway/upstream/sse.py", "upstream: SSE framing"),
    ("ChatStream._decode", "upstream: JSON decode of chunks"),
    ("aiohttp/streams.py", "upstream: aiohttp's body reader"),
    ("aiohttp/client_proto.py", "upstream: aiohttp's body reader"),
    ("aiohttp/http_parser.py", "upstream: aiohttp's body reader"),
    ("gateway/translate/", "the state machine (and request conversion)"),
    ("gateway/server/sse.py", "SSE encoding of events"),
    ("aiohttp/http_writer.py", "writes to the client's socket"),
    ("selector_events.py", "writes to the client's socket"),
    ("aiohttp/client", "upstream: aiohttp's request"),
    ("aiohttp/connector.py", "upstream: aiohttp's request"),
    ("gateway/upstream/", "upstream: the gateway's client"),
    ("_relay (", "the relay loop (gateway/server/app.py)"),
    ("aiohttp/web", "request handling (aiohttp server, middlewares, handler)"),
    ("gateway/server/", "request handling (aiohttp server, middlewares, handler)"),
    ("gateway/observe.py", "request handling (aiohttp server, middlewares, handler)"),
]


def area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for marker, name in AREAS:
            if marker in frame:
                if name == "the response store":
                    return name + (" (its writer thread)" if any("threading.py" in f for f in frames) else
                                   " (on the event loop)")
                return name
    return "the event loop itself, and the rest"


def report(collapsed: str, top: int, result: dict) -> str:
    areas: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[_short(frames[-1])] += n
        areas[area(frames)] += n
        for frame in {_short(f, line=False) for f in frames}:  # a function once per stack, whatever line
            inclusive[frame] += n
    lines = [f"{total} samples of the gateway's threads; "
             f"{result.get('completed', '?')} responses, {result.get('errors', '?')} errors during the load"]
    lines += ["", "  by area of the gateway", "  " + "-" * 22]
    for name, n in areas.most_common():
        lines.append(f"  {100 * n / max(total, 1):5.1f}%  {name}")
    for title, counter in (("own time (the function itself)", own), ("with what it calls (by function)", inclusive)):
        lines += ["", f"  {title}", "  " + "-" * len(title)]
        for frame, n in counter.most_common(top):
            lines.append(f"  {100 * n / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of ``pid``'s threads: its event loop (the main thread) and the
    others together (the store's writer and readers, the default executor). Python 3.11 does not
    name threads for the OS, so they are told apart by id only."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = collections.defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = "the event loop (main thread)" if task.name == str(pid) else "the other threads (store, executors)"
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        out[name + ", in the kernel"] += int(fields[12]) / tick
        try:  # how often it gave up its core: waiting for the GIL, a lock, a socket, a syscall
            status = (task / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                key, _, value = line.partition(":")
                out[f"{name}: {key.split('_')[0]} context switches"] += int(value)
    return out


def threads_report(before: dict[str, float], after: dict[str, float]) -> str:
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    switches = {name: n for name, n in spent.items() if name.endswith("context switches")}
    cpu = {name: seconds for name, seconds in spent.items() if name not in switches}
    total = sum(v for k, v in cpu.items() if not k.endswith("kernel")) or 1.0
    lines = ["", "  CPU by thread while sampled (from /proc, not from py-spy; user + kernel, then the kernel's part)",
             "  " + "-" * 56]
    for name, seconds in sorted(cpu.items()):
        lines.append(f"  {100 * seconds / total:5.1f}%  {seconds:6.2f} s  {name}")
    for name, count in sorted(switches.items()):
        lines.append(f"  {int(count):>14,}  {name}")
    return "\n".join(lines)


def _short(frame: str, line: bool = True) -> str:
    """``fn (/long/path/site-packages/aiohttp/streams.py:580)`` -> ``fn (aiohttp/streams.py:580)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if not line:
        where = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/gateway/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "/gateway/":
                where = "gateway/" + where
            elif marker == "/lib/python3":
                where = where.split("/", 1)[-1]
            break
    return f"{name} ({where})" if where else name


if __name__ == "__main__":
    sys.exit(main())
