"""Two builds of the gateway, or one with two configurations, side by side.

    python -m gateway.bench.ab BASE [NEW] [--a-set KEY=VALUE ...] [--b-set KEY=VALUE ...]
                               [--concurrency 1,64] [--rounds 10] [--window 1.5] [--tokens 256]

A is BASE, a copy of the repository (``git worktree add --detach ../base <commit>``); B is NEW, this
checkout unless given. Both gateways run at once, in front of one fake vLLM (the burst upstream),
each storing into its own data directory; the load generator gives them short windows in turn (A B,
then B A, ...). On the 2-core development machine the host moves a figure by 15-20 % within
minutes, so runs one after the other compare poorly; here the drift falls on both alike. For each
concurrency it prints both sides' median CPU per token and the median of B / A over the rounds,
with its range: the figure to read (below 1: B spends less); and how many responses each side
stored.

``--a-set`` / ``--b-set``: settings of one side only (e.g. ``--b-set gateway.store=false`` with no
NEW: what storing costs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from .__main__ import positive_ints
from .loadgen import LoadGenError, Spec
from .procs import REPO, BenchError, Procs, _env
from .workload import Workload


def _checkout(path: str) -> Path:
    """The checkout's root, checked: a gateway started with it on PYTHONPATH imports its code."""
    root = Path(path).resolve()
    if not (root / "gateway" / "__init__.py").exists():
        raise BenchError(f"{root} is not a checkout of the gateway (no gateway/__init__.py)")
    imported = subprocess.run([sys.executable, "-c", "import gateway; print(gateway.__file__)"], env=_env(root),
                              cwd=root, capture_output=True, text=True, timeout=60).stdout.strip()
    if not imported.startswith(str(root)):
        raise BenchError(f"python imports the gateway from {imported or '(nothing)'}, not from {root}")
    return root


def run(base: Path, new: Path, settings: dict[str, list[str]], concurrency: list[int], rounds: int,
        window: float, tokens: int, progress: Any = None) -> dict[str, Any]:
    workload = Workload("text", tokens, 1)
    body = workload.responses_request()
    results: dict[str, Any] = {"tokens": tokens, "rounds": rounds, "window_s": window, "levels": {}}
    with Procs() as procs:
        upstream = procs.upstream()
        base_url = upstream.url + workload.path_for("w") + "/v1"
        gateways = {side: procs.gateway(base_url, name=f"gateway-{side}", overrides=settings[side], checkout=checkout,
                                        data_dir=procs.dir / f"store-{side}")
                    for side, checkout in (("a", base), ("b", new))}
        loadgen = procs.loadgen()

        def window_of(side: str, c: int, seconds: float) -> dict[str, Any]:
            gateway = gateways[side]
            return loadgen.run(Spec(url=gateway.url + "/v1/responses", body=body, protocol="responses",
                                    concurrency=c, duration=seconds, warmup=0.2, watch={"gateway": gateway.pid}))

        for c in concurrency:
            for side in ("a", "b"):
                window_of(side, c, 1.0)  # warm both: connections, caches, the store's file
            per_token: dict[str, list[float]] = {"a": [], "b": []}
            errors = {"a": 0, "b": 0}
            for i in range(rounds):
                for side in (("a", "b") if i % 2 == 0 else ("b", "a")):
                    out = window_of(side, c, window)
                    errors[side] += out["errors"]
                    done = out["completed_in_window"] * tokens
                    if done:
                        per_token[side].append(out["cpu_s"]["gateway"] / done * 1e6)
                if progress and per_token["a"] and per_token["b"]:
                    progress(f"c={c} round {i + 1}/{rounds}: A {per_token['a'][-1]:.2f}, B {per_token['b'][-1]:.2f} "
                             "µs/token")
            ratios = [b / a for a, b in zip(per_token["a"], per_token["b"])]
            results["levels"][str(c)] = {
                "a_us_per_token": per_token["a"], "b_us_per_token": per_token["b"], "b_over_a": ratios,
                "errors": errors,
                "median": {"a": _median(per_token["a"]), "b": _median(per_token["b"]), "b_over_a": _median(ratios)},
            }
        # what each side stored: a setting meant for one side shows here (store: false stores nothing)
        results["stored"] = {side: _stored(procs.dir / f"store-{side}") for side in ("a", "b")}
    return results


def _stored(data_dir: Path) -> int:
    path = data_dir / "responses.sqlite3"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def _median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def report(results: dict[str, Any], base: Path, new: Path, settings: dict[str, list[str]]) -> str:
    lines = [f"A: {base} {' '.join(settings['a'])}".rstrip(), f"B: {new} {' '.join(settings['b'])}".rstrip(),
             f"{results['tokens']} tokens/response, burst upstream, {results['rounds']} rounds of "
             f"{results['window_s']:g} s windows, alternating", "",
             f"  {'c':>4}  {'A µs/token':>10}  {'B µs/token':>10}  {'B / A':>6}  {'range of B / A':>14}  errors A/B"]
    for c, level in results["levels"].items():
        m, ratios = level["median"], level["b_over_a"]
        span = f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "-"
        lines.append(f"  {c:>4}  {_fmt(m['a']):>10}  {_fmt(m['b']):>10}  {_fmt(m['b_over_a'], 3):>6}  {span:>14}  "
                     f"{level['errors']['a']}/{level['errors']['b']}")
    lines.append(f"\n  responses stored: A {results['stored']['a']:,}, B {results['stored']['b']:,}")
    return "\n".join(lines)


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="A: a checkout of the gateway (e.g. a git worktree of the commit before)")
    parser.add_argument("new", nargs="?", default=str(REPO), help="B: another checkout (default: this one)")
    parser.add_argument("--a-set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of A only")
    parser.add_argument("--b-set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of B only")
    parser.add_argument("--concurrency", type=positive_ints, default=[1, 64], help="levels, comma-separated (default 1,64)")
    parser.add_argument("--rounds", type=int, default=10, help="windows per side and level (default 10)")
    parser.add_argument("--window", type=float, default=1.5, help="seconds per window (default 1.5)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per response (default 256)")
    parser.add_argument("--json", metavar="FILE", help="also write every window's figure here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.window <= 0 or args.tokens < 1:
        parser.error("--rounds and --tokens must be >= 1 and --window > 0")
    for setting in args.a_set + args.b_set:
        if "=" not in setting:
            parser.error(f"a setting is KEY=VALUE, got {setting!r}")
    try:
        base, new = _checkout(args.base), _checkout(args.new)
        settings = {"a": args.a_set, "b": args.b_set}
        results = run(base, new, settings, args.concurrency, args.rounds, args.window, args.tokens,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (BenchError, LoadGenError) as exc:
        print(f"gateway.bench.ab: {exc}", file=sys.stderr)
        return 1
    print(report(results, base, new, settings))
    if args.json:
        Path(args.json).write_text(json.dumps({"a": str(base), "b": str(new), "settings": settings, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
