"""The measured sections. Each is a function ``(Options, Context) -> dict`` registered in
``SECTIONS``; the dict is what ``report`` prints and what ``--json`` writes. A new section (e.g. a
soak run: 1,000 streams for a minute with random client disconnects, ``Spec.disconnect_probability``,
and upstream faults, a new scenario in ``upstream.SCENARIOS``) is one more function here.

Every figure is measured ``repeats`` times; runs of different targets are interleaved (direct,
gateway, direct, gateway, ...) so that the machine's noise falls on both, and the report shows
medians, with the spread of the repeats beside the main figures.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import machine as machine_bench
from . import procstat
from .loadgen import LoadGen, Spec
from .procs import BenchError, Child, Procs, workers_supported
from .workload import Workload


@dataclass
class Options:
    tokens: int = 256
    tokens_per_chunk: int = 1
    mix: str = "text"
    upstream: str = "burst"  # "burst": each response in one write; "step": one write per chunk
    levels: list[int] = field(default_factory=lambda: [1, 16, 64, 256])
    duration: float = 3.0
    requests: Optional[int] = None
    max_window: float = 120.0
    warmup: float = 1.0
    repeats: int = 3
    gateway_workers: Optional[int] = None
    workers_levels: list[int] = field(default_factory=lambda: [64, 256])
    memory_streams: int = 1000
    memory_hold: float = 6.0
    trickle_interval_ms: int = 200
    machine_seconds: float = 0.3
    machine_repeats: int = 5

    @property
    def workload(self) -> Workload:
        return Workload(self.mix, self.tokens, self.tokens_per_chunk)

    @property
    def upstream_prefix(self) -> str:
        return self.workload.path_for("w" if self.upstream == "burst" else "step")


class Context:
    """The processes shared by the sections, started on first use."""

    def __init__(self, procs: Procs, progress: Callable[[str], None]) -> None:
        self.procs = procs
        self.progress = progress
        self._upstream: Optional[Child] = None
        self._loadgen: Optional[LoadGen] = None

    @property
    def upstream(self) -> Child:
        if self._upstream is None:
            self._upstream = self.procs.upstream()
        return self._upstream

    @property
    def loadgen(self) -> LoadGen:
        if self._loadgen is None:
            self._loadgen = self.procs.loadgen()
        return self._loadgen


# --- figures --------------------------------------------------------------------------------------


def figures(result: dict[str, Any], tokens_per_response: int) -> dict[str, Any]:
    """One run's numbers, per second and per token."""
    window = result["window_s"]
    per_response = result["events_per_response"]
    events_s = result["events"] / window
    tokens = result["events"] * tokens_per_response / per_response if per_response else None
    out: dict[str, Any] = {
        # responses per second in the steady state: events/s over events per response (counting the
        # responses that completed inside a window of a few response times is much noisier)
        "req_s": events_s / per_response if per_response else result["completed_in_window"] / window,
        "completed_per_s": result["completed_in_window"] / window,
        "events_s": events_s,
        "tokens_s": tokens / window if tokens else None,
        "mb_s": result["bytes"] / window / 1e6,
        "events_per_response": per_response,
        "ttfb_p50_ms": result["ttfb_ms"]["p50"], "ttfb_p99_ms": result["ttfb_ms"]["p99"],
        "delta_p50_ms": result["first_delta_ms"]["p50"], "delta_p99_ms": result["first_delta_ms"]["p99"],
        "latency_samples": result["ttfb_ms"]["n"],
        "errors": result["errors"], "error_samples": result["error_samples"],
        "window_s": window, "completed": result["completed"],
    }
    ours = 0.0
    for name, cpu in result["cpu_s"].items():
        if name == "machine":
            continue
        ours += cpu
        out[f"cpu_us_per_token_{name}"] = cpu / tokens * 1e6 if tokens else None
        out[f"core_pct_{name}"] = cpu / window * 100.0
    if "machine" in result["cpu_s"]:  # everything else running on the machine meanwhile: the noise
        out["core_pct_others"] = max(0.0, result["cpu_s"]["machine"] - ours) / window * 100.0
    upstream = result.get("upstream") or {}
    if upstream.get("requests"):
        out["upstream_connections_per_request"] = upstream.get("connections", 0) / upstream["requests"]
    return out


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric figure over the repeats, and ``<key>_spread``: (max-min)/median."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if key == "errors":
            out[key] = sum(r[key] for r in runs)
        elif values:
            med = statistics.median(values)
            out[key] = med
            out[key + "_spread"] = (max(values) - min(values)) / med if med else 0.0
        elif key == "error_samples":
            out[key] = [s for r in runs for s in r[key]][:5]
    return out


def _spec(opts: Options, ctx: Context, url: str, body: bytes, protocol: str, concurrency: int,
          watch: dict[str, int]) -> Spec:
    return Spec(url=url, body=body, protocol=protocol, concurrency=concurrency, duration=opts.duration,
                requests=opts.requests, max_window=opts.max_window, warmup=opts.warmup, watch=watch,
                upstream_stats=ctx.upstream.url + "/bench/stats")


def _run(ctx: Context, spec: Spec, label: str, tokens: int) -> dict[str, Any]:
    result = ctx.loadgen.run(spec)
    fig = figures(result, tokens)
    tokens_s = f"{fig['tokens_s']:,.0f}" if fig["tokens_s"] else "-"
    gw = fig.get("cpu_us_per_token_gateway")
    ctx.progress(f"{label}: {fig['req_s']:,.1f} req/s, {fig['events_s']:,.0f} events/s, {tokens_s} tokens/s"
                 + (f", gateway {gw:.1f} µs CPU/token" if gw else "")
                 + (f", {fig['errors']} errors {fig['error_samples'][:1]}" if fig["errors"] else ""))
    return fig


# --- relay: the limit and the gateway, side by side -----------------------------------------------


def relay(opts: Options, ctx: Context) -> dict[str, Any]:
    wl = opts.workload
    upstream = ctx.upstream
    gateway = ctx.procs.gateway(upstream.url + opts.upstream_prefix + "/v1", workers=opts.gateway_workers)
    direct_url = upstream.url + opts.upstream_prefix + "/v1/chat/completions"
    runs: dict[int, dict[str, list]] = {c: {"direct": [], "gateway": []} for c in opts.levels}
    try:
        for rep in range(opts.repeats):
            for c in opts.levels:
                tag = f"relay rep {rep + 1}/{opts.repeats} c={c}"
                runs[c]["direct"].append(_run(ctx, _spec(opts, ctx, direct_url, wl.chat_request(), "chat", c,
                                                         {"upstream": upstream.pid}), f"{tag} direct ", wl.tokens))
                runs[c]["gateway"].append(_run(ctx, _spec(opts, ctx, gateway.url + "/v1/responses", wl.responses_request(),
                                                          "responses", c,
                                                          {"gateway": gateway.pid, "upstream": upstream.pid}),
                                               f"{tag} gateway", wl.tokens))
    finally:
        ctx.procs.stop(gateway)
    levels = {}
    for c in opts.levels:
        direct, gw = runs[c]["direct"], runs[c]["gateway"]
        paired = [_ratios(d, g) for d, g in zip(direct, gw)]  # same repeat: the same noise
        levels[c] = {"direct": {"median": median_of(direct), "runs": direct},
                     "gateway": {"median": median_of(gw), "runs": gw},
                     "ratio": median_of(paired)}
    return {"workload": {"mix": wl.mix, "tokens": wl.tokens, "tokens_per_chunk": wl.tokens_per_chunk,
                         "upstream": opts.upstream},
            "gateway_workers": opts.gateway_workers or 1, "repeats": opts.repeats, "levels": levels}


def _ratios(direct: dict[str, Any], gateway: dict[str, Any]) -> dict[str, Any]:
    def ratio(key: str) -> Optional[float]:
        d, g = direct.get(key), gateway.get(key)
        return g / d if d and g is not None else None

    def diff(key: str) -> Optional[float]:
        d, g = direct.get(key), gateway.get(key)
        return g - d if d is not None and g is not None else None

    return {"events_s": ratio("events_s"), "tokens_s": ratio("tokens_s"), "req_s": ratio("req_s"),
            "added_delta_p50_ms": diff("delta_p50_ms"), "added_ttfb_p50_ms": diff("ttfb_p50_ms"),
            "gateway_cpu_us_per_token": gateway.get("cpu_us_per_token_gateway")}


# --- workers: 1 process against N ----------------------------------------------------------------


def workers(opts: Options, ctx: Context) -> dict[str, Any]:
    if not workers_supported():
        return {"skipped": "`vllm-gateway serve` does not accept --workers (its --help does not list it); "
                           "nothing to compare"}
    wl = opts.workload
    counts = [1, max(2, opts.gateway_workers or 2)]
    upstream = ctx.upstream
    gateways: dict[int, Child] = {}
    runs: dict[int, dict[int, list]] = {c: {w: [] for w in counts} for c in opts.workers_levels}
    try:
        for w in counts:
            try:
                gateways[w] = ctx.procs.gateway(upstream.url + opts.upstream_prefix + "/v1", workers=w if w > 1 else None,
                                                name=f"gateway-w{w}")
            except BenchError as exc:
                if w > 1:
                    return {"skipped": f"`vllm-gateway serve --workers {w}` did not start: {exc}"}
                raise
        time.sleep(0.5)  # every worker listening
        for rep in range(opts.repeats):
            for c in opts.workers_levels:
                for w in counts:
                    gw = gateways[w]
                    spec = _spec(opts, ctx, gw.url + "/v1/responses", wl.responses_request(), "responses", c,
                                 {"gateway": gw.pid, "upstream": upstream.pid})
                    runs[c][w].append(_run(ctx, spec, f"workers rep {rep + 1}/{opts.repeats} c={c} workers={w}",
                                           wl.tokens))
    finally:
        for gw in gateways.values():
            ctx.procs.stop(gw)
    levels = {}
    for c in opts.workers_levels:
        one, many = runs[c][counts[0]], runs[c][counts[1]]
        scaling = [{"events_s": m["events_s"] / o["events_s"] if o["events_s"] else None} for o, m in zip(one, many)]
        levels[c] = {w: {"median": median_of(runs[c][w]), "runs": runs[c][w]} for w in counts}
        levels[c]["scaling"] = median_of(scaling)
    return {"workload": {"mix": wl.mix, "tokens": wl.tokens, "tokens_per_chunk": wl.tokens_per_chunk,
                         "upstream": opts.upstream},
            "counts": counts, "repeats": opts.repeats, "levels": levels}


# --- memory: 1,000 streams open at once -----------------------------------------------------------


def memory(opts: Options, ctx: Context) -> dict[str, Any]:
    chunks = max(2, round(opts.memory_hold * 1000 / opts.trickle_interval_ms))
    wl = Workload("text", chunks, 1)
    upstream = ctx.upstream
    base = upstream.url + wl.path_for("trickle", opts.trickle_interval_ms) + "/v1"
    runs = []
    for rep in range(opts.repeats):
        gateway = ctx.procs.gateway(base, name="gateway-memory")
        try:
            watch = {"gateway": gateway.pid}
            url = gateway.url + "/v1/responses"
            body = wl.responses_request()
            timeout = opts.memory_hold * 4 + 60
            # Warm-up: a few streams, so that what the first request initialises is not counted.
            ctx.loadgen.run(Spec(url=url, body=body, protocol="responses", concurrency=20, mode="hold",
                                 watch=watch, request_timeout=timeout))
            time.sleep(0.3)
            idle = procstat.sample(gateway.pid)
            result = ctx.loadgen.run(Spec(url=url, body=body, protocol="responses", concurrency=opts.memory_streams,
                                          mode="hold", watch=watch, request_timeout=timeout))
        finally:
            ctx.procs.stop(gateway)
        peak = max(result["peak_rss_kb"], result["hwm_kb"])
        run = {
            "streams": opts.memory_streams, "max_open": result["max_open"], "errors": result["errors"],
            "error_samples": result["error_samples"], "completed": result["completed"],
            "idle_rss_kb": idle.rss_kb, "peak_rss_kb": peak, "sampled_peak_rss_kb": result["peak_rss_kb"],
            "hwm_kb": result["hwm_kb"], "rss_all_open_kb": result["rss_at_max_open_kb"],
            "per_stream_kb": (peak - idle.rss_kb) / opts.memory_streams,
            "all_open_s": result["all_open_s"], "duration_s": result["duration_s"],
        }
        ctx.progress(f"memory rep {rep + 1}/{opts.repeats}: {run['max_open']} open at once, idle "
                     f"{idle.rss_kb / 1024:.1f} MB, peak {peak / 1024:.1f} MB, {run['per_stream_kb']:.1f} KB/stream, "
                     f"{run['errors']} errors")
        runs.append(run)
    return {"streams": opts.memory_streams, "hold_s": opts.memory_hold, "interval_ms": opts.trickle_interval_ms,
            "repeats": opts.repeats, "median": median_of(runs), "runs": runs}


# --- the state machine alone ----------------------------------------------------------------------


def machine(opts: Options, ctx: Context) -> dict[str, Any]:
    return machine_bench.run(opts.tokens, opts.tokens_per_chunk, opts.machine_repeats, opts.machine_seconds,
                             ctx.progress)


SECTIONS: dict[str, Callable[[Options, Context], dict[str, Any]]] = {
    "machine": machine,  # first: in this process, while nothing else runs
    "relay": relay,
    "workers": workers,
    "memory": memory,
}
