"""STORE: what storing responses costs per token: ``store: false`` beside ``store: true`` on SQLite
and on Redis, the same load, the same upstream, interleaved in one run.

Two gateways: one on SQLite (its file in the benchmark's temporary directory), one on a
``redis-server`` the benchmark starts on a free loopback port (skipped, with a note, when
``redis-server`` is not installed). ``store: false`` is sent to the SQLite gateway: it measures
that a request which is not stored costs what it did before the store existed. The CPU of the
store's own process (``redis-server``) is shown apart (``rd``), since it is work a replica set
pays too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import orjson

from .loadgen import Spec
from .procs import HOST, Child, _child_setup, free_port
from .report import _cores, _n, _spread, _workload, table

LEVELS = (1, 64)


def _body(request: bytes, store: bool) -> bytes:
    body = orjson.loads(request)
    body["store"] = store
    return orjson.dumps(body)


def _redis(ctx: Any) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the benchmark's own, nothing persisted; (process, url)."""
    import socket

    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", HOST,
                             "--save", "", "--appendonly", "no", "--dir", str(ctx.procs.dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_child_setup)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://{HOST}:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def store(opts: Any, ctx: Any) -> dict[str, Any]:
    from .sections import _run, median_of

    wl = opts.workload
    upstream = ctx.upstream
    base = upstream.url + opts.upstream_prefix + "/v1"
    levels = [c for c in opts.levels if c in LEVELS] or list(opts.levels[:2])
    gateways: dict[str, Child] = {}
    redis_proc = None
    note = None
    try:
        gateways["sqlite"] = ctx.procs.gateway(base, name="gateway-sqlite",
                                               overrides=[f"gateway.data_dir={ctx.procs.dir / 'store-sqlite'}"])
        if shutil.which("redis-server"):
            redis_proc, url = _redis(ctx)
            gateways["redis"] = ctx.procs.gateway(base, name="gateway-redis",
                                                  overrides=["gateway.store_backend=redis", f"gateway.redis_url={url}"])
        else:
            note = "redis-server is not installed (bash tests/install_redis.sh): no Redis row"
        modes = [("store: false", "sqlite", False), ("store: true, SQLite", "sqlite", True)]
        if "redis" in gateways:
            modes.append(("store: true, Redis", "redis", True))
        runs: dict[int, dict[str, list]] = {c: {m[0]: [] for m in modes} for c in levels}
        for rep in range(opts.repeats):
            for c in levels:
                for label, backend, keep in modes:
                    gw = gateways[backend]
                    watch = {"gateway": gw.pid, "upstream": upstream.pid}
                    if backend == "redis" and redis_proc is not None:
                        watch["redis"] = redis_proc.pid
                    spec = Spec(url=gw.url + "/v1/responses", body=_body(wl.responses_request(), keep),
                                protocol="responses", concurrency=c, duration=opts.duration, requests=opts.requests,
                                max_window=opts.max_window, warmup=opts.warmup, watch=watch,
                                upstream_stats=upstream.url + "/bench/stats")
                    runs[c][label].append(_run(ctx, spec, f"store rep {rep + 1}/{opts.repeats} c={c} {label}",
                                               wl.tokens))
    finally:
        for gw in gateways.values():
            ctx.procs.stop(gw)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(15)
    out: dict[int, Any] = {}
    for c in levels:
        out[c] = {}
        off = runs[c]["store: false"]
        for label in runs[c]:
            out[c][label] = {"median": median_of(runs[c][label]), "runs": runs[c][label]}
            if label != "store: false":
                ratios = [{"cpu": m["cpu_us_per_token_gateway"] / o["cpu_us_per_token_gateway"]}
                          for o, m in zip(off, runs[c][label])
                          if o.get("cpu_us_per_token_gateway") and m.get("cpu_us_per_token_gateway")]
                out[c][label]["vs_off"] = median_of(ratios) if ratios else {}
    return {"workload": {"mix": wl.mix, "tokens": wl.tokens, "tokens_per_chunk": wl.tokens_per_chunk,
                         "upstream": opts.upstream},
            "repeats": opts.repeats, "levels": out, "note": note}


def store_text(res: dict[str, Any]) -> str:
    title = (f"STORE: gateway CPU per token with store: false, and store: true on SQLite and on Redis, interleaved\n"
             f"  {_workload(res['workload'])}; median of {res['repeats']} repeat(s)")
    rows = []
    for c, level in res["levels"].items():
        for label, entry in level.items():
            m = entry["median"]
            vs = entry.get("vs_off", {}).get("cpu")
            redis_cpu = m.get("cpu_us_per_token_redis")
            rows.append([str(c), label, _n(m.get("req_s"), 1), _n(m.get("tokens_s")),
                         _n(m.get("cpu_us_per_token_gateway"), 2) + _spread(m, "cpu_us_per_token_gateway"),
                         _n(vs, 2) + ("x" if vs else ""), _n(redis_cpu, 2), _p50(m), _cores(m),
                         str(m.get("errors", 0))])
    text = title + "\n\n" + table(["c", "mode", "req/s", "tokens/s", "gw CPU µs/token", "÷ store: false",
                                   "redis µs/token", "1st delta p50 ms", "CPU % of a core", "errors"], rows)
    if res.get("note"):
        text += f"\n  note: {res['note']}"
    return text


def _p50(m: dict[str, Any]) -> str:
    return _n(m.get("delta_p50_ms"), 2)
