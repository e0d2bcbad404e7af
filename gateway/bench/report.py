"""The printed report (plain text, aligned columns), the targets from the issue, and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Optional

from ..cli import usable_cores

# (key, text) of the targets the issues set (#16 for the relay); evaluated in ``targets``.
TARGETS = [
    ("cpu_per_token", "gateway CPU per token <= 5 µs (text, 1 token/chunk, c=64)"),
    ("cpu_per_token_c1", "gateway CPU per token <= 8 µs (text, 1 token/chunk, c=1)"),
    ("events_ratio", "gateway events/s >= 0.5 x direct (c=64)"),
    ("added_delta", "added first-delta p50 < 0.3 ms (gateway - direct, c=1)"),
    ("machine", "state machine >= 300,000 text chunks/s"),
    ("memory", "1,000 streams: 0 errors and < 50 KB/stream"),
    ("soak", "soak: 0 hung, 0 broken, nothing left open, no memory growth"),
]


# --- machine information --------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def version(dist: str) -> Optional[str]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    usable = usable_cores()
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cores": os.cpu_count(), "usable_cores": usable, "cpu": cpu_model,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "aiohttp": version("aiohttp"), "msgspec": version("msgspec"), "orjson": version("orjson"),
        "uvloop": version("uvloop"), "gateway": version("vllm-responses-gateway"),
        "command": " ".join([os.path.basename(sys.executable), "-m", "gateway.bench"] + sys.argv[1:]),
    }


def header(info: dict[str, Any]) -> str:
    load = " ".join(f"{x:.2f}" for x in info["load_avg"]) if info["load_avg"] else "?"
    uv = f"uvloop {info['uvloop']} (the gateway runs on it)" if info["uvloop"] else \
        ("uvloop not installed (the gateway runs on asyncio's loop; it is a dependency on Linux and macOS: "
         "pip install -e . installs it)")
    return "\n".join([
        f"vllm-responses-gateway benchmark, {info['time']}",
        f"machine: {info['cores']} cores ({info['usable_cores']} usable), {info['cpu'] or '?'}, {info['os']}, "
        f"load average at start {load}",
        f"python {info['python']} ({info['implementation']}), aiohttp {info['aiohttp']}, msgspec {info['msgspec']}, "
        f"orjson {info['orjson']}; {uv}",
        f"command: {info['command']}",
    ])


# --- formatting -----------------------------------------------------------------------------------


def _n(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def _spread(stats: dict[str, Any], key: str) -> str:
    s = stats.get(key + "_spread")
    return f" ±{s * 50:.0f}%" if s is not None else ""  # half the range, as ± around the median


def table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [indent + "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for row in rows:
        lines.append(indent + "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                        for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def _cores(m: dict[str, Any]) -> str:
    """CPU % of one core per process (ga: gateway, up: upstream, lo: load generator; ot: everything else
    on the machine during the window: other people's work, the kernel's network processing)."""
    return " ".join(f"{name[:2]} {m[f'core_pct_{name}']:.0f}" for name in ("gateway", "upstream", "loadgen", "others")
                    if m.get(f"core_pct_{name}") is not None)


def _p(stats: dict[str, Any], a: str, b: str) -> str:
    return f"{_n(stats.get(a), 2)} / {_n(stats.get(b), 2)}"


# --- sections -------------------------------------------------------------------------------------


def _workload(wl: dict[str, Any]) -> str:
    return (f"mix={wl['mix']}, {wl['tokens']} tokens/response, {wl['tokens_per_chunk']} token(s)/chunk, "
            f"upstream writes: {wl.get('upstream', 'burst')}")


def relay_text(res: dict[str, Any]) -> str:
    wl = res["workload"]
    title = (f"RELAY: the limit (load generator -> fake vLLM) and the gateway (load generator -> gateway -> fake "
             f"vLLM)\n  {_workload(wl)}, gateway processes: {res['gateway_workers']}"
             f"{'; settings: ' + ' '.join(res['settings']) if res.get('settings') else ''}; median of "
             f"{res['repeats']} repeat(s), ± = half the range of the repeats")
    rows = []
    for c, level in res["levels"].items():
        for target in ("direct", "gateway"):
            m = level[target]["median"]
            own = "gateway" if target == "gateway" else "loadgen"
            cpu = m.get(f"cpu_us_per_token_{own}")
            rows.append([
                str(c), target, _n(m.get("req_s"), 1), _n(m.get("events_s")) + _spread(m, "events_s"),
                _n(m.get("tokens_s")), _p(m, "ttfb_p50_ms", "ttfb_p99_ms"), _p(m, "delta_p50_ms", "delta_p99_ms"),
                (f"{own[:2]} {_n(cpu, 2)}" + _spread(m, f"cpu_us_per_token_{own}")) if cpu is not None else "-",
                _cores(m), _n(m.get("upstream_connections_per_request"), 2), str(m.get("errors", 0)),
            ])
    main = table(["c", "target", "req/s", "events/s", "tokens/s", "TTFB ms p50/p99", "1st delta ms p50/p99",
                  "CPU µs/token", "CPU % of a core", "up conn/req", "errors"], rows)
    rows = []
    for c, level in res["levels"].items():
        r = level["ratio"]
        rows.append([str(c), "gateway/direct", _n(r.get("events_s"), 3) + _spread(r, "events_s"),
                     _n(r.get("tokens_s"), 3), _n(r.get("req_s"), 3),
                     _n(r.get("gateway_cpu_us_per_token"), 2) + _spread(r, "gateway_cpu_us_per_token"),
                     _n(r.get("added_ttfb_p50_ms"), 3), _n(r.get("added_delta_p50_ms"), 3)])
    ratios = table(["c", "", "events/s ratio", "tokens/s ratio", "req/s ratio", "gw CPU µs/token",
                    "added TTFB p50 ms", "added 1st delta p50 ms"], rows)
    cpu = sorted(c for c in (lv["ratio"].get("gateway_cpu_us_per_token") for lv in res["levels"].values()) if c)
    if cpu:
        median_cpu = cpu[len(cpu) // 2]
        ratios += (f"\n\n  At {median_cpu:.1f} µs of CPU per token, one gateway process streams at most "
                   f"~{1e6 / median_cpu:,.0f} tokens/s with a whole core to itself.")
    errors = [s for level in res["levels"].values() for t in ("direct", "gateway")
              for s in level[t]["median"].get("error_samples", [])]
    notes = ("\n  first errors: " + "; ".join(errors[:3])) if errors else ""
    return f"{title}\n\n{main}\n\n{ratios}{notes}"


def workers_text(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"WORKERS: skipped: {res['skipped']}"
    wl = res["workload"]
    title = (f"WORKERS: `serve --workers N` (SO_REUSEPORT), CPU summed over the gateway's processes\n"
             f"  {_workload(wl)}; median of {res['repeats']} repeat(s)")
    rows = []
    for c, level in res["levels"].items():
        for w in res["counts"]:
            m = level[w]["median"] if w in level else level[str(w)]["median"]
            scaling = level["scaling"] if w != res["counts"][0] else {}
            rows.append([str(c), str(w), _n(m.get("req_s"), 1), _n(m.get("events_s")) + _spread(m, "events_s"),
                         _n(m.get("tokens_s")), _n(m.get("cpu_us_per_token_gateway"), 2) +
                         _spread(m, "cpu_us_per_token_gateway"), _cores(m),
                         _n(scaling.get("events_s"), 2) + ("x" if scaling else "") + _spread(scaling, "events_s"),
                         str(m.get("errors", 0))])
    return title + "\n\n" + table(["c", "workers", "req/s", "events/s", "tokens/s", "gw CPU µs/token",
                                   "CPU % of a core", "scaling", "errors"], rows)


def floor_text(res: dict[str, Any]) -> str:
    wl = res["workload"]
    title = (f"FLOOR: direct, the bare aiohttp relay (gateway.bench.floor: vLLM's bytes copied through, nothing "
             f"parsed) and the gateway, interleaved\n  {_workload(wl)}; median of {res['repeats']} repeat(s)")
    rows = []
    for c, level in res["levels"].items():
        r = level["ratio"]
        for target in ("direct", "floor", "gateway"):
            m = level[target]["median"]
            own = "loadgen" if target == "direct" else "gateway"
            cpu = m.get(f"cpu_us_per_token_{own}")
            ratio = {"floor": r.get("floor_events_s"), "gateway": r.get("gateway_events_s")}.get(target)
            added = r.get(f"{target}_added_delta_p50_ms")
            rows.append([str(c), target, _n(m.get("events_s")) + _spread(m, "events_s"),
                         (f"{own[:2]} {_n(cpu, 2)}" + _spread(m, f"cpu_us_per_token_{own}")) if cpu is not None else "-",
                         _n(ratio, 3) if ratio is not None else "-",
                         _n(r.get("gateway_cpu_over_floor"), 2) + "x" if target == "gateway" else "-",
                         _p(m, "delta_p50_ms", "delta_p99_ms"), _n(added, 3) if added is not None else "-",
                         _cores(m), str(m.get("errors", 0))])
    return title + "\n\n" + table(["c", "target", "events/s", "CPU µs/token", "÷ direct events/s", "CPU ÷ floor",
                                   "1st delta ms p50/p99", "added p50 ms", "CPU % of a core", "errors"], rows)


def split_text(res: dict[str, Any]) -> str:
    short, long_ = res["tokens"]
    title = (f"SPLIT: CPU per response at {short} and {long_} tokens (c=64, interleaved), and the line through "
             f"them: what a request costs and what each token adds\n  median of {res['repeats']} repeat(s); "
             f"floor = the bare aiohttp relay")
    rows = []
    for row, r in res["rows"].items():
        for tokens in (short, long_):
            m = r["medians"].get(tokens) or r["medians"][str(tokens)]
            cpu = m.get("cpu_us_per_token_gateway")
            rows.append([row, str(tokens), _n(m.get("req_s"), 1), _n(cpu, 2) + _spread(m, "cpu_us_per_token_gateway"),
                         _n(cpu * tokens if cpu is not None else None), _cores(m), str(m.get("errors", 0))])
    body = table(["target", "tokens", "req/s", "CPU µs/token", "CPU µs/response", "CPU % of a core", "errors"], rows)
    lines = [f"  {row}: a request costs {r['per_request_us']:,.0f} µs of CPU whatever its length "
             f"({', '.join(f'{v:,.0f}' for v in r['per_request_runs'])}), each token {r['per_token_us']:.2f} µs more "
             f"({', '.join(f'{v:.2f}' for v in r['per_token_runs'])}); at {long_} tokens "
             f"{r['per_request_us'] / long_:.2f} µs per token is the request's"
             for row, r in res["rows"].items()]
    return f"{title}\n\n{body}\n\n" + "\n".join(lines)


def inspect_text(res: dict[str, Any]) -> str:
    title = (f"INSPECT: the inspector off, on with no viewer, on with one viewer (following the live requests one "
             f"after another: a worst case)\n  {_workload(res['workload'])}; median of {res['repeats']} repeat(s); "
             f"x off = this mode / off, per repeat")
    rows = []
    for c, level in res["levels"].items():
        for mode in ("off", "on, no viewer", "on, one viewer"):
            m = level[mode]["median"]
            vs = level[mode].get("vs_off", {})
            rows.append([str(c), mode, _n(m.get("req_s"), 1), _n(m.get("tokens_s")) + _spread(m, "tokens_s"),
                         _n(m.get("cpu_us_per_token_gateway"), 2) + _spread(m, "cpu_us_per_token_gateway"),
                         _n(vs.get("cpu_us_per_token"), 2) + ("x" if vs else ""),
                         _n(m.get("delta_p50_ms"), 2), _cores(m), str(m.get("errors", 0))])
    viewer = [f"c={c}: {_n(lv['viewer'].get('watched'))} requests watched, "
              f"{_n(lv['viewer'].get('entry_events'))} entry events, {_n((lv['viewer'].get('bytes') or 0) / 1e6, 1)} MB, "
              f"{_n(lv['viewer'].get('overflows'))} overflows"
              for c, lv in res["levels"].items() if lv.get("viewer")]
    return (title + "\n\n" + table(["c", "inspector", "req/s", "tokens/s", "gw CPU µs/token", "x off",
                                     "1st delta p50 ms", "CPU % of a core", "errors"], rows)
            + ("\n\n  the viewer, per run: " + "; ".join(viewer) if viewer else ""))


def memory_text(res: dict[str, Any]) -> str:
    title = (f"MEMORY: {res['streams']:,} streams open at once through the gateway (upstream trickles a chunk every "
             f"{res['interval_ms']} ms for {res['hold_s']:g} s); median of {res['repeats']} repeat(s)")
    rows = []
    for i, r in enumerate(res["runs"] + [res["median"]]):
        rows.append(["median" if i == len(res["runs"]) else f"run {i + 1}", _n(r.get("max_open")),
                     str(r.get("errors")), _n(r["idle_rss_kb"] / 1024, 1), _n(r["peak_rss_kb"] / 1024, 1),
                     _n(r["rss_all_open_kb"] / 1024, 1), _n(r["per_stream_kb"], 1), _n(r.get("all_open_s"), 2)])
    errors = res["median"].get("error_samples") or []
    notes = ("\n  first errors: " + "; ".join(errors[:3])) if errors else ""
    return title + "\n\n" + table(["", "open at once", "errors", "idle RSS MB", "peak RSS MB", "RSS all open MB",
                                   "KB/stream", "s to open all"], rows) + notes


def _mb(kb: Optional[float], sign: bool = False) -> str:
    if kb is None:
        return "-"
    return f"{kb / 1024:+.1f}" if sign else f"{kb / 1024:.1f}"


def soak_text(res: dict[str, Any]) -> str:
    settings = " ".join(x.split(".", 1)[1] for x in res["gateway_settings"])
    title = (f"SOAK: {res['streams']:,} streams at once through one gateway for {res['seconds']:g} s (after a "
             f"{res['warmup_s']:g} s warm-up; then a {res['second_s']:g} s second soak), each phase followed by a wait "
             f"for every stream to end;\n  {res['disconnect_probability']:.0%} of the streams left by the client at a "
             f"random time, the fake vLLM misbehaving on purpose in a random mix (below); seed {res['seed']}\n"
             f"  gateway: {settings}; hung = no event (keepalives aside) for {res['hang_s']:g} s, or still open when "
             f"the wait ends")
    rows = []
    for r in res["phases"] + [None]:
        if r is None:
            t = res["totals"]
            rows.append(["all", "", "", f"{sum(t.values()):,}", "", "", f"{t['completed'] + t['incomplete']:,}",
                         f"{t['failed_stream'] + t['failed_http']:,}", f"{t['disconnected']:,}", str(t["hung"]),
                         str(t["broken"]), str(res["unexpected"]), "", ""])
            continue
        o = r["outcomes"]
        rows.append([r["label"], f"{r['seconds']:g}", f"{r['drain_s']:.1f}", f"{r['streams']:,}", _n(r["req_s"]),
                     f"{r['max_open']:,}/{_n(r.get('min_open_steady'))}",
                     f"{o['completed'] + o['incomplete']:,}", f"{o['failed_stream'] + o['failed_http']:,}",
                     f"{o['disconnected']:,}", str(o["hung"]), str(o["broken"]),
                     str(sum(row["unexpected"] for row in r["by_kind"].values())),
                     f"{r['core_pct_gateway']:.0f} ({_cores(r)})", _mb(r["rss_idle_after_kb"])])
    phases = table(["phase", "load s", "drain s", "streams", "req/s", "open max/min", "completed", "failed cleanly",
                    "disconnected", "hung", "broken", "unexpected", "gw CPU % (all)", "RSS idle after MB"], rows)
    kinds = {k["name"]: k for k in res["kinds"]}
    rows = []
    for name, row in res["by_kind"].items():
        n = sum(v for k, v in row.items() if k != "unexpected")
        rows.append([name, kinds[name]["expected"], f"{n:,}", f"{row['completed']:,}", f"{row['incomplete']:,}",
                     f"{row['failed_stream']:,}", f"{row['failed_http']:,}", f"{row['disconnected']:,}",
                     str(row["hung"]), str(row["broken"]), str(row["unexpected"])])
    by_kind = table(["upstream does", "expected", "streams", "completed", "incomplete", "failed (stream)",
                     "failed (HTTP)", "disconnected", "hung", "broken", "unexpected"], rows)
    errors = ", ".join(f"{k} {v:,}" for k, v in sorted(res["errors"].items(), key=lambda kv: -kv[1])) or "none"
    c, m, u = res["checks"], res["memory"], res["upstream"]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "FAILED"

    lag = u["close_lag_ms"]
    probe = res["probe_ms"]

    def after(metric: str) -> str:  # its value after each phase
        return " / ".join(_n(r["metrics_after"][metric]) for r in res["phases"])
    rows = [
        ["hung streams (must be 0)", str(c["hung"]) + (" (" + ", ".join(f"{k} {v}" for k, v in
                                                                       res["hung_reasons"].items()) + ")"
                                                   if res["hung_reasons"] else ""), verdict(c["hung"] == 0)],
        ["broken streams (must be 0)", str(c["broken"]), verdict(c["broken"] == 0)],
        ["gateway_open_streams after each phase (/metrics)", after("gateway_open_streams"),
         verdict(c["open_streams_after"] == 0)],
        ["gateway_upstream_in_flight after each phase", after("gateway_upstream_in_flight"),
         verdict(c["upstream_in_flight_after"] == 0)],
        ["upstream requests never closed (still open, or stall ran out)", str(c["upstream_left_open"]),
         verdict(c["upstream_left_open"] == 0)],
        ["streams the client left", f"{u['client_disconnects']:,}", ""],
        ["  their upstream request: closed by the gateway after the client left",
         f"{u['closed_after_client_left']:,} (of which {u['sent_after_client_left']:,} sent only after it left)", ""],
        ["  ... already over upstream / never sent upstream",
         f"{u['ended_before_client_left']:,} / {u['never_sent_upstream']:,}", ""],
        ["  ... ran to its end upstream (the gateway noticed late)", f"{u['ran_on_after_client_left']:,}", ""],
        ["  ... still open upstream (must be 0)", f"{u['abandoned_still_open']:,}", verdict(u["abandoned_still_open"] == 0)],
        ["  client left -> gateway closed upstream, ms p50/p99/max",
         f"{_n(lag['p50'], 1)} / {_n(lag['p99'], 1)} / {_n(lag['max'], 1)}", ""],
        ["upstream requests closed early, by cause", ", ".join(f"{k} {v:,}" for k, v in u["early"].items()),
         verdict(u["early"].get("other", 0) == 0)],
        ["gateway RSS MB: before / peak / after (+growth)",
         f"{_mb(m['before_kb'])} / {_mb(m['peak_kb'])} / {_mb(m['after_kb'])} ({_mb(m['growth_kb'], True)})", ""],
        ["  during the soak, at 1/4, 1/2, 3/4, the end", " / ".join(_mb(x) for x in m["main_trend_kb"]), ""],
        [f"  after the second soak (growth <= {m['growth_limit_kb'] / 1024:g} MB)",
         f"{_mb(m['after_second_kb'])} ({_mb(m['growth_second_kb'], True)}"
         + (f", {m['growth_second_bytes_per_request']:+,.0f} bytes/stream)" if m.get("growth_second_bytes_per_request")
            is not None else ")"), verdict(c["no_growth"])],
        ["gateway still answers after the soak", c["still_answers_detail"], verdict(c["still_answers"])],
        ["gateway process alive to the end", "yes" if c["alive"] else "no", verdict(c["alive"])],
        ["gateway log records (WARNING and above)", f"{c['log']['records']:,}", ""],
        ["gateway answer time, no upstream (GET 404), ms p50/p99/max",
         f"{_n(probe['p50'], 1)} / {_n(probe['p99'], 1)} / {_n(probe['max'], 1)}", ""],
        ["connections dropped by a full listen queue (whole machine)", f"{res['listen_overflows']:,}", ""],
        ["  the gateway's accept queue: most seen waiting / its backlog",
         f"{res['accept_queue']['max_queued']:,} / {_n(res['accept_queue']['backlog'])}", ""],
    ]
    checks = table(["check", "measured", "verdict"], rows)
    notes = [f"  errors by kind: {errors}",
             f"  upstream: {u['requests']:,} requests ({u['tries']:,} tries with the gateway's retries), ended "
             + ", ".join(f"{k} {v:,}" for k, v in sorted(u["states"].items()))
             + f"; keepalive comments received: {sum(r['keepalives'] for r in res['phases']):,}"]
    for kind in ("hung", "broken", "unexpected"):
        if res["samples"][kind]:
            notes.append(f"  {kind}: " + "; ".join(res["samples"][kind][:3]))
    if u["samples"]:
        notes.append("  upstream: " + "; ".join(u["samples"][:3]))
    for kind, n in list(c["log"]["kinds"].items())[:5]:
        notes.append(f"  gateway log, {n:,}x: {kind[:300]}")
    return "\n\n".join([title, phases, by_kind, checks, "\n".join(notes)])


def machine_text(res: dict[str, Any]) -> str:
    title = (f"STATE MACHINE alone (in-process, {res['tokens']} tokens/response, {res['tokens_per_chunk']} "
             f"token(s)/chunk); median of {res['repeats']} repeats (best in brackets)")
    rows = []
    for mix, r in res["mixes"].items():
        m, p = r["machine"], r["pipeline"]
        rows.append([mix, str(r["chunks_per_response"]),
                     f"{m['us_per_chunk']:.2f} ({m['best_us_per_chunk']:.2f})",
                     f"{m['chunks_per_s']:,.0f} ({m['best_chunks_per_s']:,.0f})",
                     f"{p['us_per_chunk']:.2f} ({p['best_us_per_chunk']:.2f})",
                     f"{p['chunks_per_s']:,.0f} ({p['best_chunks_per_s']:,.0f})"])
    return title + "\n\n" + table(["workload", "chunks", "machine µs/chunk", "machine chunks/s",
                                   "decode+machine+encode µs/chunk", "chunks/s"], rows)


# --- targets --------------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def add(key: str, measured: Optional[str], ok: Optional[bool], note: str = "") -> None:
        text = dict(TARGETS)[key]
        out.append({"target": text, "measured": measured or "-",
                    "verdict": "not measured" if ok is None else ("met" if ok else "MISSED"), "note": note})

    relay = results.get("relay")
    level = lambda c: relay["levels"].get(c) or relay["levels"].get(str(c)) if relay else None  # noqa: E731
    l64, l1 = level(64), level(1)
    exact = bool(relay) and relay["workload"]["mix"] == "text" and relay["workload"]["tokens_per_chunk"] == 1
    settings = f"settings: {' '.join(relay['settings'])}" if relay and relay.get("settings") else ""
    store_off = _store_off_cpu(results)
    for key, lv, limit, c in (("cpu_per_token", l64, 5.0, 64), ("cpu_per_token_c1", l1, 8.0, 1)):
        if not lv:
            add(key, None, None, f"needs the relay section at c={c}")
            continue
        cpu = lv["ratio"].get("gateway_cpu_us_per_token")
        notes = [n for n in (settings, f"store: false {store_off[c]:.2f} µs" if c in store_off else "",
                             _bound_note(results, c, limit, exact) or _floor_note(results, c),
                             _split_note(results) if c == 64 else "",
                             "" if exact else "run with --mix text --tokens-per-chunk 1 to judge") if n]
        add(key, f"{cpu:.2f} µs" if cpu is not None else None, (cpu <= limit) if exact and cpu is not None else None,
            "; ".join(notes))
    if l64:
        ratio = l64["ratio"].get("events_s")
        measured = f"{ratio:.3f}x" if ratio is not None else None
        ok = ratio >= 0.5 if ratio is not None else None
        note = _ceiling_note(l64, usable_cores())
        workers = _workers_ratio(results, l64)
        if workers is not None:  # the same direct figure, through `serve --workers N` (the workers section)
            n, w_ratio = workers
            measured = f"{measured}; --workers {n}: {w_ratio:.3f}x"
            ok = bool(ok) or w_ratio >= 0.5
            note = f"{note}; --workers {n}: the workers section's events/s at c=64 over the relay's direct"
        floor_note = "; ".join(n for n in (_floor_note(results, 64, ratio=True), _ratio_bound_note(results, l64)) if n)
        add("events_ratio", measured, ok, f"{note}; {floor_note}" if floor_note else note)
    else:
        add("events_ratio", None, None, "needs the relay section at c=64")
    if l1:
        added = l1["ratio"].get("added_delta_p50_ms")
        floor_added = _floor_added_delta(results)
        note = ""
        if floor_added is not None:
            median, least = floor_added
            note = (f"the bare aiohttp relay alone adds {median:.3f} ms (floor section; {least:.3f} in its best repeat)"
                    + (": no relay on aiohttp can meet this on this machine" if least >= 0.3 else ""))
        add("added_delta", f"{added:.3f} ms" if added is not None else None, added < 0.3 if added is not None else None,
            note)
    else:
        add("added_delta", None, None, "needs the relay section at c=1")
    machine = results.get("machine")
    if machine:
        rate = machine["mixes"]["text"]["machine"]["chunks_per_s"]
        add("machine", f"{rate:,.0f} chunks/s", rate >= 300_000)
    else:
        add("machine", None, None, "needs the machine section")
    memory = results.get("memory")
    if memory:
        m = memory["median"]
        ok = m["errors"] == 0 and m["per_stream_kb"] < 50 and m.get("max_open") == memory["streams"]
        add("memory", f"{m['errors']} errors, {m['per_stream_kb']:.1f} KB/stream, {m.get('max_open'):.0f} open", ok)
    else:
        add("memory", None, None, "needs the memory section")
    soak = results.get("soak")
    if soak:
        c, m = soak["checks"], soak["memory"]
        add("soak", f"{c['hung']} hung, {c['broken']} broken, {c['open_streams_after']:g} open after, "
                    f"{c['upstream_in_flight_after']:g} in flight after, {c['upstream_left_open']} upstream left "
                    f"open, RSS {_mb(m['growth_second_kb'], True)} MB",
            soak["ok"])
    else:
        add("soak", None, None, "run --only soak")
    return out


def _workers_ratio(results: dict[str, Any], relay64: dict[str, Any]) -> Optional[tuple[int, float]]:
    """(N, events/s of `serve --workers N` at c=64 / the relay's direct events/s), when both ran."""
    workers = results.get("workers") or {}
    levels, counts = workers.get("levels") or {}, workers.get("counts") or []
    level = levels.get(64) or levels.get("64")
    direct = relay64["direct"]["median"].get("events_s")
    if not level or not counts or not direct:
        return None
    many = level.get(counts[-1]) or level.get(str(counts[-1]))
    events = (many or {}).get("median", {}).get("events_s")
    return (counts[-1], events / direct) if events else None


def _floor_level(results: dict[str, Any], c: int) -> dict[str, Any]:
    levels = (results.get("floor") or {}).get("levels") or {}
    return levels.get(c) or levels.get(str(c)) or {}


def _lower_bound(results: dict[str, Any], c: int) -> Optional[tuple[float, float, float]]:
    """(bound, floor, pipeline) in µs per token: the bare aiohttp relay's CPU per token at ``c``
    (floor section, its fastest repeat) plus decode + state machine + encode per chunk (machine
    section, text, its best repeat). The gateway does all the floor does, and that per chunk on top,
    so no build of it on aiohttp and msgspec costs less on this machine; the fastest repeats, so
    that the host's noise does not raise the bound. Only for 1 token per chunk (a chunk is a token)."""
    level, machine = _floor_level(results, c), results.get("machine")
    if not level or not machine or machine.get("tokens_per_chunk") != 1 \
            or (results["floor"].get("workload") or {}).get("tokens_per_chunk") != 1:
        return None
    floors = [r["cpu_us_per_token_gateway"] for r in level["floor"]["runs"] if r.get("cpu_us_per_token_gateway")]
    pipeline = machine["mixes"]["text"]["pipeline"]["best_us_per_chunk"]
    return (min(floors) + pipeline, min(floors), pipeline) if floors else None


def _bound_note(results: dict[str, Any], c: int, limit: float, exact: bool) -> str:
    bound = _lower_bound(results, c)
    if bound is None or not exact:
        return ""
    total, floor, pipeline = bound
    parts = (f"the bare aiohttp relay {floor:.2f} µs/token (floor section, fastest repeat) + decode, translate, "
             f"encode {pipeline:.2f} µs/chunk (machine section, best repeat) = {total:.2f} µs")
    over = _floor_level(results, c)["ratio"].get("gateway_cpu_over_floor")
    spent = f"; the gateway spent {_n(over, 2)}x the bare relay's CPU"
    if total > limit:
        return f"cannot be met on this machine by a gateway on aiohttp and msgspec: {parts}{spent}"
    return f"lower bound on this machine: {parts}{spent}"


def _ratio_bound_note(results: dict[str, Any], relay64: dict[str, Any]) -> str:
    """The lower bound at c=64, per gateway event, against what 0.5x direct allows one process."""
    bound = _lower_bound(results, 64)
    g, direct = relay64["gateway"]["median"], relay64["direct"]["median"].get("events_s")
    if bound is None or not direct or not g.get("events_s") or not g.get("tokens_s"):
        return ""
    per_event = bound[0] * g["tokens_s"] / g["events_s"]
    budget = 1e6 / (0.5 * direct)
    verdict = "cannot be met in one process on this machine" if per_event > budget else "within reach in one process"
    return f"lower bound {per_event:.2f} µs per event (floor + pipeline) against {budget:.2f} allowed: {verdict}"


def _floor_added_delta(results: dict[str, Any]) -> Optional[tuple[float, float]]:
    """(median, least) over the floor section's repeats at c=1 of the floor's first delta minus
    direct's (each repeat against its own direct run)."""
    level = _floor_level(results, 1)
    added = [p["floor_added_delta_p50_ms"] for p in level.get("pairs", []) if p["floor_added_delta_p50_ms"] is not None]
    return (level["ratio"]["floor_added_delta_p50_ms"], min(added)) if added else None


def _floor_note(results: dict[str, Any], c: int, ratio: bool = False) -> str:
    """The floor section's bare aiohttp relay at concurrency ``c``, when it ran."""
    level = _floor_level(results, c)
    if not level:
        return ""
    cpu = level["floor"]["median"].get("cpu_us_per_token_gateway")
    r = level["ratio"]
    text = f"the bare aiohttp relay (floor section): {_n(cpu, 2)} µs/token"
    if ratio:
        text += f", {_n(r.get('floor_events_s'), 3)}x direct"
    return text + f"; the gateway {_n(r.get('gateway_cpu_over_floor'), 2)}x its CPU"


def _split_note(results: dict[str, Any]) -> str:
    rows = (results.get("split") or {}).get("rows")
    if not rows:
        return ""
    g, f = rows["gateway"], rows["floor"]
    return (f"split section: the gateway {g['per_request_us']:,.0f} µs per request + {g['per_token_us']:.2f} µs per "
            f"token, the bare aiohttp relay {f['per_request_us']:,.0f} + {f['per_token_us']:.2f}")


def _store_off_cpu(results: dict[str, Any]) -> dict[int, float]:
    """The store section's ``store: false`` CPU per token by concurrency, when it ran."""
    store = results.get("store") or {}
    out = {}
    for c, level in (store.get("levels") or {}).items():
        m = (level.get("store: false") or {}).get("median", {})
        if m.get("cpu_us_per_token_gateway") is not None:
            out[int(c)] = m["cpu_us_per_token_gateway"]
    return out


def _ceiling_note(level: dict[str, Any], cores: Optional[int]) -> str:
    """What the ratio needs on this machine, from what was measured: the load generator and the fake
    vLLM spend CPU per gateway event on the same cores. One gateway process runs on one core; with
    every core busy (``--workers``) the three share them all."""
    m, direct = level["gateway"]["median"], level["direct"]["median"].get("events_s")
    events = m.get("events_s")
    pct = {name: m.get(f"core_pct_{name}") for name in ("gateway", "upstream", "loadgen")}
    if not (events and direct and cores) or any(v is None for v in pct.values()):
        return ""
    us = {name: p / 100.0 / events * 1e6 for name, p in pct.items()}  # µs of CPU per gateway event
    goal = 0.5 * direct
    one_process = 1e6 / goal  # one process on one core
    all_cores = cores * 1e6 / goal - us["loadgen"] - us["upstream"]
    return (f"0.5x is {goal:,.0f} events/s: the gateway must spend <= {one_process:.2f} µs of CPU per event in one "
            f"process, or <= {all_cores:.2f} µs with all {cores} cores busy (--workers; the load generator and the fake "
            f"vLLM take {us['loadgen'] + us['upstream']:.2f} µs per event of the same cores); it spent "
            f"{us['gateway']:.2f} µs")


def targets_text(rows: list[dict[str, Any]]) -> str:
    notes = []
    body = []
    for r in rows:
        verdict = r["verdict"]
        if r["note"]:
            notes.append(r["note"])
            verdict += f" [{len(notes)}]"
        body.append([r["target"], r["measured"], verdict])
    text = "TARGETS (from the issues)\n\n" + table(["target", "measured", "verdict"], body)
    return text + "".join(f"\n  [{n}] {note}" for n, note in enumerate(notes, 1))


def _store_text(res: dict[str, Any]) -> str:
    from .store import store_text  # gateway/bench/store.py, which uses this module's helpers

    return store_text(res)


SECTION_TEXT = {"machine": machine_text, "relay": relay_text, "workers": workers_text, "floor": floor_text,
                "split": split_text,
                "memory": memory_text,
                "inspect": inspect_text, "store": _store_text, "soak": soak_text}


def render(info: dict[str, Any], results: dict[str, Any], wall_s: float) -> str:
    parts = [header(info)]
    for name in ("relay", "workers", "floor", "split", "memory", "inspect", "store", "soak", "machine"):
        if name in results:
            parts.append(SECTION_TEXT[name](results[name]))
    parts.append(targets_text(targets(results)))
    parts.append(f"wall time {wall_s:.0f} s")
    return "\n\n".join(parts) + "\n"


def write_json(path: str, info: dict[str, Any], results: dict[str, Any], options: dict[str, Any], wall_s: float) -> None:
    doc = {"machine": info, "options": options, "wall_s": wall_s, "targets": targets(results), "results": results}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")
