"""The measured sections. Each is a function ``(Options, Context) -> dict`` registered in
``SECTIONS``; the dict is what ``report`` prints and what ``--json`` writes. A new section is one
more function here (``soak`` is the latest: 1,000 streams for a minute with random client
disconnects and upstream faults).

Every figure is measured ``repeats`` times; runs of different targets are interleaved (direct,
gateway, direct, gateway, ...) so that the machine's noise falls on both, and the report shows
medians, with the spread of the repeats beside the main figures.
"""

from __future__ import annotations

import re
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import orjson

from . import machine as machine_bench
from . import procstat
from . import soak as soak_plan
from .loadgen import LoadGen, Spec
from .procs import BenchError, Child, Procs, workers_supported
from .store import store as store_section
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
    gateway_settings: list[str] = field(default_factory=list)  # --set KEY=VALUE: the relay's and workers' gateway
    workers_levels: list[int] = field(default_factory=lambda: [64, 256])
    inspect_levels: list[int] = field(default_factory=lambda: [1, 16])
    floor_levels: list[int] = field(default_factory=lambda: [1, 64])
    split_tokens: tuple[int, int] = (16, 256)
    memory_streams: int = 1000
    memory_hold: float = 6.0
    trickle_interval_ms: int = 200
    machine_seconds: float = 0.3
    machine_repeats: int = 5
    soak_seconds: float = 60.0
    soak_streams: int = 1000
    soak_disconnects: float = 0.1  # fraction of soak streams the client leaves at a random time
    soak_warmup: float = 10.0  # a soak this long first: the memory "before" is read after it
    soak_second: float = 10.0  # a second soak this long after the main one (0: none): growth between the two
    seed: int = 1

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
    gateway = ctx.procs.gateway(upstream.url + opts.upstream_prefix + "/v1", workers=opts.gateway_workers,
                                overrides=opts.gateway_settings)
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
            "gateway_workers": opts.gateway_workers or 1, "settings": opts.gateway_settings,
            "repeats": opts.repeats, "levels": levels}


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


# --- floor: the cheapest aiohttp relay, beside the direct run and the gateway ---------------------


def floor(opts: Options, ctx: Context) -> dict[str, Any]:
    """Direct, the bare aiohttp byte relay (``gateway.bench.floor``) and the gateway, interleaved
    per repeat: what any relay built on aiohttp pays per event here, and the gateway against it."""
    wl = opts.workload
    upstream = ctx.upstream
    bare = ctx.procs.floor(upstream.url)
    gateway = ctx.procs.gateway(upstream.url + opts.upstream_prefix + "/v1", overrides=opts.gateway_settings)
    direct_url = upstream.url + opts.upstream_prefix + "/v1/chat/completions"
    rows = ("direct", "floor", "gateway")
    runs: dict[int, dict[str, list]] = {c: {row: [] for row in rows} for c in opts.floor_levels}
    try:
        for rep in range(opts.repeats):
            for c in opts.floor_levels:
                tag = f"floor rep {rep + 1}/{opts.repeats} c={c}"
                targets = {
                    "direct": (direct_url, wl.chat_request(), "chat", {"upstream": upstream.pid}),
                    "floor": (bare.url + opts.upstream_prefix + "/v1/chat/completions", wl.chat_request(), "chat",
                              {"gateway": bare.pid, "upstream": upstream.pid}),
                    "gateway": (gateway.url + "/v1/responses", wl.responses_request(), "responses",
                                {"gateway": gateway.pid, "upstream": upstream.pid}),
                }
                for row in rows:
                    url, body, protocol, watch = targets[row]
                    runs[c][row].append(_run(ctx, _spec(opts, ctx, url, body, protocol, c, watch),
                                             f"{tag} {row:7}", wl.tokens))
    finally:
        ctx.procs.stop(gateway)
        ctx.procs.stop(bare)
    levels = {}
    for c in opts.floor_levels:
        by_row = runs[c]
        paired = []  # per repeat, each against its own direct run (the same noise)
        for d, f, g in zip(by_row["direct"], by_row["floor"], by_row["gateway"]):
            floor_vs, gateway_vs = _ratios(d, f), _ratios(d, g)
            f_cpu, g_cpu = f.get("cpu_us_per_token_gateway"), g.get("cpu_us_per_token_gateway")
            paired.append({"floor_events_s": floor_vs["events_s"], "gateway_events_s": gateway_vs["events_s"],
                           "gateway_cpu_over_floor": g_cpu / f_cpu if f_cpu and g_cpu else None,
                           "floor_added_delta_p50_ms": floor_vs["added_delta_p50_ms"],
                           "gateway_added_delta_p50_ms": gateway_vs["added_delta_p50_ms"]})
        levels[c] = {row: {"median": median_of(by_row[row]), "runs": by_row[row]} for row in rows}
        levels[c]["ratio"], levels[c]["pairs"] = median_of(paired), paired
    return {"workload": {"mix": wl.mix, "tokens": wl.tokens, "tokens_per_chunk": wl.tokens_per_chunk,
                         "upstream": opts.upstream},
            "settings": opts.gateway_settings, "repeats": opts.repeats, "levels": levels}


# --- split: what a request costs and what a token costs -------------------------------------------


def split(opts: Options, ctx: Context) -> dict[str, Any]:
    """CPU per response at two answer lengths (``split_tokens``), interleaved, at c=64, for the
    gateway and for the bare aiohttp relay (the floor): a straight line through the two gives the
    cost of a request whatever its length (HTTP in and out, the upstream request; for the gateway
    also conversion and the store's row) and of each token after it."""
    short, long_ = opts.split_tokens
    upstream = ctx.upstream
    workloads = {tokens: Workload(opts.mix, tokens, opts.tokens_per_chunk) for tokens in (short, long_)}
    gateways: dict[int, Child] = {}  # one per length: the fake vLLM's workload is in the gateway's base URL
    bare = ctx.procs.floor(upstream.url)
    runs: dict[str, dict[int, list]] = {"floor": {short: [], long_: []}, "gateway": {short: [], long_: []}}
    try:
        for tokens, wl in workloads.items():
            gateways[tokens] = ctx.procs.gateway(upstream.url + wl.path_for("w") + "/v1", name=f"gateway-{tokens}",
                                                 overrides=opts.gateway_settings)
        for rep in range(opts.repeats):
            for tokens, wl in workloads.items():
                gw = gateways[tokens]
                targets = {
                    "floor": (bare.url + wl.path_for("w") + "/v1/chat/completions", wl.chat_request(), "chat",
                              {"gateway": bare.pid, "upstream": upstream.pid}),
                    "gateway": (gw.url + "/v1/responses", wl.responses_request(), "responses",
                                {"gateway": gw.pid, "upstream": upstream.pid}),
                }
                for row, (url, body, protocol, watch) in targets.items():
                    runs[row][tokens].append(_run(ctx, _spec(opts, ctx, url, body, protocol, 64, watch),
                                                  f"split rep {rep + 1}/{opts.repeats} {tokens} tokens {row}", tokens))
    finally:
        for gw in gateways.values():
            ctx.procs.stop(gw)
        ctx.procs.stop(bare)
    return {"tokens": [short, long_], "repeats": opts.repeats, "settings": opts.gateway_settings,
            "rows": {row: {"runs": by_len, "medians": {t: median_of(r) for t, r in by_len.items()},
                           **split_figures(by_len, short, long_)} for row, by_len in runs.items()}}


def split_figures(runs: dict[int, list], short: int, long_: int) -> dict[str, Any]:
    """Per repeat (the same noise for both lengths), then the median of the repeats."""
    per_request, per_token = [], []
    for a, b in zip(runs[short], runs[long_]):
        cost_a, cost_b = a["cpu_us_per_token_gateway"] * short, b["cpu_us_per_token_gateway"] * long_
        token = (cost_b - cost_a) / (long_ - short)
        per_token.append(token)
        per_request.append(cost_a - short * token)
    return {"per_request_us": statistics.median(per_request), "per_token_us": statistics.median(per_token),
            "per_request_runs": per_request, "per_token_runs": per_token}


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
                                                name=f"gateway-w{w}", overrides=opts.gateway_settings)
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


# --- inspect: what the inspector costs ----------------------------------------------------------

INSPECT_MODES = ("off", "on, no viewer", "on, one viewer")
_INSPECT_KEY = "bench-inspector-admin-key"


def inspect(opts: Options, ctx: Context) -> dict[str, Any]:
    """The same load through three gateways, runs interleaved: the inspector off, on with nobody
    watching (it records every request into its ring buffer), and on with one viewer following the
    live requests one after another (the feed streams each watched request's entries to it)."""
    wl = opts.workload
    upstream = ctx.upstream
    base = upstream.url + opts.upstream_prefix + "/v1"
    on = ["gateway.inspect=true", f"gateway.inspect_admin_key={_INSPECT_KEY}"]
    gateways: dict[str, Child] = {}
    viewer: Optional[Child] = None
    runs: dict[int, dict[str, list]] = {c: {m: [] for m in INSPECT_MODES} for c in opts.inspect_levels}
    watched: dict[int, list[dict[str, int]]] = {c: [] for c in opts.inspect_levels}
    try:
        for i, mode in enumerate(INSPECT_MODES):
            gateways[mode] = ctx.procs.gateway(base, name=f"gateway-inspect{i}", overrides=on if i else ())
        viewer = ctx.procs.viewer(gateways["on, one viewer"].url, _INSPECT_KEY)
        for rep in range(opts.repeats):
            for c in opts.inspect_levels:
                for mode in INSPECT_MODES:
                    gw = gateways[mode]
                    before = ctx.procs.viewer_stats(viewer) if mode == "on, one viewer" else None
                    spec = _spec(opts, ctx, gw.url + "/v1/responses", wl.responses_request(), "responses", c,
                                 {"gateway": gw.pid, "upstream": upstream.pid})
                    runs[c][mode].append(_run(ctx, spec, f"inspect rep {rep + 1}/{opts.repeats} c={c} {mode}",
                                              wl.tokens))
                    if before is not None:
                        after = ctx.procs.viewer_stats(viewer)
                        watched[c].append({k: after[k] - before[k] for k in after})
    finally:
        if viewer is not None:
            ctx.procs.stop(viewer)
        for gw in gateways.values():
            ctx.procs.stop(gw)
    levels = {}
    for c in opts.inspect_levels:
        off = runs[c]["off"]
        levels[c] = {mode: {"median": median_of(runs[c][mode]), "runs": runs[c][mode]} for mode in INSPECT_MODES}
        for mode in INSPECT_MODES[1:]:  # per repeat: the same moment, the same noise
            levels[c][mode]["vs_off"] = median_of([
                {"cpu_us_per_token": m["cpu_us_per_token_gateway"] / o["cpu_us_per_token_gateway"]
                 if o.get("cpu_us_per_token_gateway") and m.get("cpu_us_per_token_gateway") else None,
                 "tokens_s": m["tokens_s"] / o["tokens_s"] if o.get("tokens_s") and m.get("tokens_s") else None}
                for o, m in zip(off, runs[c][mode])])
        levels[c]["viewer"] = median_of(watched[c]) if watched[c] else {}
    return {"workload": {"mix": wl.mix, "tokens": wl.tokens, "tokens_per_chunk": wl.tokens_per_chunk,
                         "upstream": opts.upstream},
            "repeats": opts.repeats, "levels": levels}


# --- memory: 1,000 streams open at once -----------------------------------------------------------


def memory(opts: Options, ctx: Context) -> dict[str, Any]:
    chunks = max(2, round(opts.memory_hold * 1000 / opts.trickle_interval_ms))
    wl = Workload("text", chunks, 1)
    upstream = ctx.upstream
    base = upstream.url + wl.path_for("trickle", opts.trickle_interval_ms) + "/v1"
    runs = []
    for rep in range(opts.repeats):
        gateway = ctx.procs.gateway(base, name="gateway-memory", overrides=opts.gateway_settings)
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


# --- soak: 1,000 streams for a minute, client disconnects and upstream faults ----------------------

SOAK_TIMEOUT_S = 5.0  # the gateway's first_byte_timeout_s and idle_timeout_s during the soak
SOAK_KEEPALIVE_S = 1.0  # its keepalive_interval_s
SOAK_HANG_S = SOAK_TIMEOUT_S + 10.0  # a stream with no event (keepalives aside) for this long is hung
SOAK_LONGEST_S = 13.0  # the longest a soak stream lasts if the gateway does its job (slow: 4 gaps <= 3 s) + margin
SOAK_IDLE_S = 3.0  # the gateway idles this long before each memory reading
SOAK_RAMP_S = 5.0  # the first streams of a phase start spread over this (at most half the phase)
SOAK_DISCONNECT_WINDOW_S = 6.0  # a client that leaves does so within this of sending its request
SOAK_GROWTH_LIMIT_KB = 4096  # "no growth": RSS after the second soak within this of after the soak


def _http_get(url: str, timeout: float = 10.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"GET {url} failed: {getattr(exc, 'reason', exc)}") from None


def _gateway_metrics(url: str) -> dict[str, float]:
    """The few /metrics figures the soak checks (summed over label sets)."""
    text = _http_get(url + "/metrics").decode("utf-8", "replace")
    out: dict[str, float] = {}
    for name in ("gateway_open_streams", "gateway_upstream_in_flight", "gateway_upstream_retries_total"):
        values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
        out[name] = sum(float(v) for v in values) if values else 0.0
    return out


def _still_answers(url: str) -> tuple[bool, str]:
    """One plain streamed request after the soak: does the gateway still complete a stream?"""
    body = ('{"model": "bench", "input": "%s", "stream": true}' % soak_plan.directive("z-000001", "text", 1)).encode()
    request = urllib.request.Request(url + "/v1/responses", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30.0) as resp:
            text = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        return False, f"failed: {getattr(exc, 'reason', exc)}"
    ok = b"event: response.completed\n" in text
    return ok, "a stream completed" if ok else f"no response.completed in {text[-200:]!r}"


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ (\w+) (\S+): (.*)$")
_OWN_FRAME = re.compile(r'File ".*?/(gateway/(?!bench/)[^"]+)", line (\d+), in (\S+)')


def _log_summary(lines: list[str]) -> dict[str, Any]:
    """The gateway's log (WARNING and above) grouped by kind: level, logger, message without its
    variable parts, the exception a traceback ends with and the last frame of gateway code in it."""
    records: list[list[str]] = []
    for line in lines:
        if _LOG_RECORD.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    kinds: dict[str, int] = {}
    first: dict[str, str] = {}
    for record in records:
        m = _LOG_RECORD.match(record[0])
        if m:
            message = re.sub(r"[0-9a-f]{16,}|\d+(\.\d+)?", "#", m.group(3))  # ids, ports, times
            head = f"{m.group(1)} {m.group(2)}: {message}"
        else:
            head = record[0]
        frames = [f"{f[0]}:{f[1]} in {f[2]}" for f in _OWN_FRAME.findall("\n".join(record))]
        exc = next((line.strip() for line in reversed(record[1:]) if line and not line.startswith(" ")), "")
        key = " | ".join(x for x in (head, frames[-1] if frames else "", exc) if x)
        kinds[key] = kinds.get(key, 0) + 1
        first.setdefault(key, "\n".join(record))
    ordered = sorted(kinds.items(), key=lambda kv: -kv[1])
    return {"records": len(records), "kinds": dict(ordered), "first": [first[k] for k, _ in ordered[:3]]}


def _upstream_check(result: dict[str, Any], records: dict[str, list[Any]]) -> dict[str, Any]:
    """What the fake vLLM saw of each request of a phase, against what the client did."""
    states: dict[str, int] = {}
    for kind, tries, state, started, ended in records.values():
        states[state] = states.get(state, 0) + 1
    left_open = [f"{i} ({r[0]}, {r[2]})" for i, r in records.items() if r[2] in ("open", "expired")]
    # Every request the client abandoned: closed upstream after it left, or already over by then.
    closed_after, ended_before, never_sent, ran_on, still_open, sent_late = 0, 0, 0, [], 0, 0
    lags: list[float] = []
    abandoned = set()
    for stream_id, left_at in result["disconnects"]:
        abandoned.add(stream_id)
        record = records.get(stream_id)
        if record is None:
            never_sent += 1  # the client left before the gateway sent it upstream
            continue
        kind, tries, state, started, ended = record
        if state in ("open", "expired"):
            still_open += 1
        elif ended < left_at:  # over before the client left (a stall the gateway gave up on, say)
            ended_before += 1
        elif state == "early":  # the gateway closed it because the client left
            closed_after += 1
            if started < left_at:  # how long the gateway took to notice, and close what it had open
                lags.append((ended - left_at) * 1000.0)
            else:  # the gateway read the request after the client had left (it was queued), then closed
                sent_late += 1
        elif state == "http" or ended < max(left_at, started) + 0.25:
            ended_before += 1  # an answer that takes no time, or the last write and the leaving crossed
        else:  # the upstream streamed on to its end: the gateway noticed the client late
            ran_on.append(f"{stream_id} ({kind}, ended by itself {ended - left_at:.2f} s after the client left"
                          + (f", sent upstream {started - left_at:.2f} s after it left)" if started > left_at else ")"))
    # Requests the upstream saw closed before their end, by cause.
    early: dict[str, int] = {"client left": 0, "gateway timeout (stall)": 0, "invalid JSON line": 0, "other": 0}
    other: list[str] = []
    for stream_id, (kind, tries, state, started, ended) in records.items():
        if state != "early":
            continue
        if stream_id in abandoned or stream_id in result.get("hung_ids", ()):
            early["client left"] += 1
        elif kind.startswith("stall_"):
            early["gateway timeout (stall)"] += 1
        elif kind == "bad_json":
            early["invalid JSON line"] += 1
        else:
            early["other"] += 1
            if len(other) < 5:
                other.append(f"{stream_id} ({kind})")
    return {
        "requests": len(records), "tries": sum(r[1] for r in records.values()), "states": states,
        "left_open": len(left_open), "left_open_samples": left_open[:5],
        "client_disconnects": len(result["disconnects"]), "closed_after_client_left": closed_after,
        "ended_before_client_left": ended_before, "never_sent_upstream": never_sent,
        "sent_after_client_left": sent_late,
        "ran_on_after_client_left": len(ran_on), "ran_on_samples": ran_on[:5], "abandoned_still_open": still_open,
        "close_lag_ms": soak_plan.percentiles(lags), "lags_ms": lags, "early": early,
        "early_other_samples": other,
    }


def soak(opts: Options, ctx: Context) -> dict[str, Any]:
    upstream = ctx.upstream
    overrides = [f"gateway.first_byte_timeout_s={SOAK_TIMEOUT_S:g}", f"gateway.idle_timeout_s={SOAK_TIMEOUT_S:g}",
                 f"gateway.keepalive_interval_s={SOAK_KEEPALIVE_S:g}"]
    drain_s = SOAK_LONGEST_S + SOAK_HANG_S
    phases = [("warm-up", "w", opts.soak_warmup), ("soak", "m", opts.soak_seconds)]
    if opts.soak_second > 0:
        phases.append(("second soak", "s", opts.soak_second))
    gateway = ctx.procs.gateway(upstream.url + "/soak/text/32/1/v1", name="gateway-soak", overrides=overrides)
    runs: list[dict[str, Any]] = []
    hwm = 0
    backlog = procstat.listen_backlog(int(gateway.url.rsplit(":", 1)[1]))
    try:
        _http_get(upstream.url + "/bench/soak/clear")
        for label, tag, seconds in phases:
            ctx.progress(f"soak {label}: {opts.soak_streams} streams for {seconds:g} s, then until all have ended "
                         f"(at most {drain_s:g} s)")
            spec = Spec(url=gateway.url + "/v1/responses", body=b"", protocol="responses", mode="soak",
                        concurrency=opts.soak_streams, duration=seconds, warmup=0.0,
                        drain_timeout=drain_s + 15.0, request_timeout=seconds + drain_s + 60.0,
                        watch={"gateway": gateway.pid, "upstream": upstream.pid},
                        disconnect_probability=opts.soak_disconnects,
                        soak={"seed": opts.seed, "phase": tag, "ramp_s": min(SOAK_RAMP_S, seconds / 2),
                              "hang_s": SOAK_HANG_S, "drain_s": drain_s,
                              "disconnect_window_s": SOAK_DISCONNECT_WINDOW_S})
            result = ctx.loadgen.run(spec)
            time.sleep(SOAK_IDLE_S)  # every stream is over: the gateway idles
            records = orjson.loads(_http_get(upstream.url + "/bench/soak/clear"))
            metrics = _gateway_metrics(gateway.url)
            idle = procstat.sample(gateway.pid)
            result["label"] = label
            result["rss_idle_after_kb"] = idle.rss_kb
            result["metrics_after"] = metrics
            result["upstream_check"] = _upstream_check(result, records)
            del result["disconnects"], result["hung_ids"]  # long lists, used up
            o = result["outcomes"]
            ctx.progress(f"soak {label}: {result['streams']:,} streams, {result['req_s']:,.0f}/s, max "
                         f"{result['max_open']} open; completed {o['completed'] + o['incomplete']:,}, failed cleanly "
                         f"{o['failed_stream'] + o['failed_http']:,}, disconnected {o['disconnected']:,}, hung "
                         f"{o['hung']}, broken {o['broken']}; gateway CPU {result['core_pct_gateway']:.0f}% of a "
                         f"core, RSS idle after {idle.rss_kb / 1024:.1f} MB, open streams "
                         f"{metrics['gateway_open_streams']:g}")
            runs.append(result)
        answers = _still_answers(gateway.url)
        hwm = procstat.sample(gateway.pid).hwm_kb
    finally:
        alive = gateway.proc.poll() is None
        ctx.procs.stop(gateway)
        try:
            log = [line for line in gateway.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            log = []
    return _soak_summary(opts, runs, answers, alive, hwm, log, overrides, backlog)


def _soak_summary(opts: Options, runs: list[dict[str, Any]], answers: tuple[bool, str], alive: bool, hwm: int,
                  log: list[str], overrides: list[str], backlog: Optional[int]) -> dict[str, Any]:
    # Every phase is judged, the warm-up too (it is also where the memory "before" comes from).
    totals = {o: sum(r["outcomes"][o] for r in runs) for o in soak_plan.OUTCOMES}
    hung_reasons: dict[str, int] = {}
    for r in runs:
        for reason, n in r["hung_reasons"].items():
            hung_reasons[reason] = hung_reasons.get(reason, 0) + n
    unexpected = sum(row["unexpected"] for r in runs for row in r["by_kind"].values())
    by_kind: dict[str, dict[str, int]] = {}
    for r in runs:
        for kind, row in r["by_kind"].items():
            into = by_kind.setdefault(kind, {k: 0 for k in row})
            for k, v in row.items():
                into[k] += v
    errors: dict[str, int] = {}
    for r in runs:
        for code, n in r["stream_errors"].items():
            errors[f"response.failed {code}"] = errors.get(f"response.failed {code}", 0) + n
        for code, n in r["http_errors"].items():
            errors[f"HTTP {code}"] = errors.get(f"HTTP {code}", 0) + n
    before = runs[0]["rss_idle_after_kb"]
    after = runs[1]["rss_idle_after_kb"]
    second = runs[2]["rss_idle_after_kb"] if len(runs) > 2 else None
    peak = max([hwm] + [r["peak_rss_kb"] for r in runs])
    upstream: dict[str, Any] = {}
    for key in ("requests", "tries", "left_open", "client_disconnects", "closed_after_client_left",
                "sent_after_client_left", "ended_before_client_left", "never_sent_upstream", "ran_on_after_client_left",
                "abandoned_still_open"):
        upstream[key] = sum(r["upstream_check"][key] for r in runs)
    upstream["early"] = {cause: sum(r["upstream_check"]["early"][cause] for r in runs)
                         for cause in runs[0]["upstream_check"]["early"]}
    upstream["states"] = {}
    for r in runs:
        for state, n in r["upstream_check"]["states"].items():
            upstream["states"][state] = upstream["states"].get(state, 0) + n
    upstream["close_lag_ms"] = soak_plan.percentiles([x for r in runs for x in r["upstream_check"]["lags_ms"]])
    upstream["samples"] = [x for r in runs for key in ("left_open_samples", "ran_on_samples", "early_other_samples")
                           for x in r["upstream_check"][key]][:8]
    for r in runs:
        del r["upstream_check"]["lags_ms"]
    samples = {kind: [x for r in runs for x in r["samples"][kind]][:10] for kind in ("hung", "broken", "unexpected")}
    checks = {
        "hung": totals["hung"],
        "broken": totals["broken"],
        "open_streams_after": max(r["metrics_after"]["gateway_open_streams"] for r in runs),
        "upstream_in_flight_after": max(r["metrics_after"]["gateway_upstream_in_flight"] for r in runs),
        "upstream_left_open": sum(r["upstream_check"]["left_open"] for r in runs),
        "abandoned_still_open": sum(r["upstream_check"]["abandoned_still_open"] for r in runs),
        "ran_on_after_client_left": sum(r["upstream_check"]["ran_on_after_client_left"] for r in runs),
        "still_answers": answers[0], "still_answers_detail": answers[1], "alive": alive,
        "log_lines": len(log), "log": _log_summary(log),
    }
    growth_second = (second - after) if second is not None else None
    main = runs[1]["timeline"]  # (seconds, open, RSS KiB, overflows), one a second
    trend = [main[min(len(main) - 1, round(q * (len(main) - 1)))][2] for q in (0.25, 0.5, 0.75, 1.0)] if main else []
    checks["no_growth"] = growth_second is None or growth_second <= SOAK_GROWTH_LIMIT_KB
    ok = (checks["hung"] == 0 and checks["broken"] == 0 and checks["open_streams_after"] == 0
          and checks["upstream_in_flight_after"] == 0 and checks["upstream_left_open"] == 0
          and checks["abandoned_still_open"] == 0 and answers[0] and alive and checks["no_growth"])
    return {
        "streams": opts.soak_streams, "seconds": opts.soak_seconds, "warmup_s": opts.soak_warmup,
        "second_s": opts.soak_second, "disconnect_probability": opts.soak_disconnects, "seed": opts.seed,
        "gateway_settings": overrides, "hang_s": SOAK_HANG_S, "idle_s": SOAK_IDLE_S,
        "kinds": [{"name": k.name, "weight": k.weight, "expected": k.expected, "what": k.what} for k in soak_plan.KINDS],
        "totals": totals, "hung_reasons": hung_reasons, "unexpected": unexpected, "by_kind": by_kind,
        "errors": errors, "samples": samples, "upstream": upstream,
        "memory": {"before_kb": before, "peak_kb": peak, "after_kb": after, "after_second_kb": second,
                   "growth_kb": after - before, "growth_second_kb": growth_second, "main_trend_kb": trend,
                   "growth_second_bytes_per_request": growth_second * 1024 / runs[2]["streams"]
                   if growth_second is not None and runs[2]["streams"] else None,
                   "growth_limit_kb": SOAK_GROWTH_LIMIT_KB},
        "checks": checks, "ok": ok, "phases": runs,
        "probe_ms": runs[1]["probe_ms"],  # during the main soak
        "listen_overflows": sum(r["listen_overflows"] for r in runs),
        "accept_queue": {"max_queued": max(r["accept_queue"]["max_queued"] for r in runs), "backlog": backlog},
    }


SECTIONS: dict[str, Callable[[Options, Context], dict[str, Any]]] = {
    "machine": machine,  # first: in this process, while nothing else runs
    "relay": relay,
    "workers": workers,
    "floor": floor,
    "split": split,
    "memory": memory,
    "inspect": inspect,
    "store": store_section,  # gateway/bench/store.py: store: false / SQLite / Redis
    "soak": soak,  # only when asked for (--only soak): it takes minutes
}
DEFAULT_SECTIONS = ["machine", "relay", "workers", "floor", "split", "memory", "inspect", "store"]
