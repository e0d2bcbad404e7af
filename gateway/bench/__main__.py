"""``python -m gateway.bench``: the gateway's performance benchmark (see gateway/bench/README.md)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from typing import Optional, Sequence

from . import report
from .loadgen import LoadGenError
from .procs import BenchError, Procs
from .sections import DEFAULT_SECTIONS, SECTIONS, Context, Options
from .workload import MIXES, Workload


def positive_ints(text: str) -> list[int]:
    """An argparse type: integers >= 1, comma-separated."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected integers >= 1")
    return values


def _sections(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway.bench",
        description="Benchmark the gateway against the physical limit: a fake vLLM streaming as fast as the machine "
                    "allows, read directly and through `vllm-gateway serve`; plus memory with 1,000 open streams, "
                    "scaling with --workers, and the state machine alone. Everything runs on 127.0.0.1 and stops "
                    "by itself.")
    p.add_argument("--tokens", type=int, default=256, help="tokens per response (default 256)")
    p.add_argument("--tokens-per-chunk", type=int, default=1, help="tokens per upstream chunk (default 1)")
    p.add_argument("--mix", choices=MIXES, default="text", help="what the fake vLLM generates (default text)")
    p.add_argument("--upstream", choices=("burst", "step"), default="burst",
                   help="how the fake vLLM writes: burst = each response in one write, as fast as possible (default); "
                        "step = one write per chunk, one chunk per event-loop turn, as uvicorn writes vLLM's stream")
    p.add_argument("--concurrency", type=positive_ints, default=[1, 16, 64, 256], metavar="N,N,...",
                   help="concurrency levels of the relay section (default 1,16,64,256)")
    window = p.add_mutually_exclusive_group()
    window.add_argument("--duration", type=float, metavar="S", help="measured seconds per run (default 3; --quick 0.5)")
    window.add_argument("--requests", type=int, metavar="N",
                        help="instead of --duration: a run ends after N responses completed (at most 120 s)")
    p.add_argument("--warmup", type=float, metavar="S", help="seconds of load before each measurement (default 1)")
    p.add_argument("--repeats", type=int, metavar="N", help="runs per figure; medians are reported (default 3)")
    p.add_argument("--only", type=_sections, metavar="SECTION[,SECTION]",
                   help=f"run only these sections: {', '.join(SECTIONS)} (default: all but soak, which runs "
                        f"only when named)")
    p.add_argument("--gateway-workers", type=int, metavar="N",
                   help="start the gateway with `serve --workers N` in the relay section (CPU and memory are summed "
                        "over its processes); the workers section compares 1 with max(2, N)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a gateway setting for the relay, workers, floor, split and memory sections, as on `vllm-gateway serve` "
                        "(e.g. --set gateway.store=false); repeatable. The settings are printed with the results")
    p.add_argument("--memory-streams", type=int, default=1000, metavar="N",
                   help="streams held open at once in the memory section (default 1000)")
    p.add_argument("--soak-seconds", type=float, metavar="S",
                   help="soak section: seconds of load (default 60; --quick 10)")
    p.add_argument("--soak-streams", type=int, default=1000, metavar="N",
                   help="soak section: streams kept open at once (default 1000)")
    p.add_argument("--soak-disconnects", type=float, default=0.1, metavar="P",
                   help="soak section: fraction of streams the client leaves at a random time (default 0.1)")
    p.add_argument("--seed", type=int, default=1,
                   help="soak section: the seed of every random choice (stream kinds, upstream timing, "
                        "disconnects); the same seed gives stream n the same behaviour (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write every figure, each repeat, to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: 1 repeat, short runs (figures are noisier)")
    return p


def options_from(args: argparse.Namespace) -> Options:
    quick = args.quick
    opts = Options(
        tokens=args.tokens, tokens_per_chunk=args.tokens_per_chunk, mix=args.mix, upstream=args.upstream,
        levels=args.concurrency,
        duration=args.duration if args.duration is not None else (0.5 if quick else 3.0),
        requests=args.requests,
        warmup=args.warmup if args.warmup is not None else (0.3 if quick else 1.0),
        repeats=args.repeats if args.repeats is not None else (1 if quick else 3),
        gateway_workers=args.gateway_workers,
        gateway_settings=args.settings,
        workers_levels=[64] if quick else [64, 256],
        inspect_levels=[16] if quick else [1, 16],
        memory_streams=args.memory_streams,
        memory_hold=2.0 if quick else 6.0,
        machine_seconds=0.1 if quick else 0.3,
        machine_repeats=2 if quick else 5,
        soak_seconds=args.soak_seconds if args.soak_seconds is not None else (10.0 if quick else 60.0),
        soak_streams=args.soak_streams,
        soak_disconnects=args.soak_disconnects,
        soak_warmup=4.0 if quick else 10.0,
        soak_second=5.0 if quick else 10.0,
        seed=args.seed,
    )
    Workload(opts.mix, opts.tokens, opts.tokens_per_chunk)  # validates
    if opts.repeats < 1 or opts.duration <= 0 or (opts.requests is not None and opts.requests < 1):
        raise ValueError("--repeats, --duration and --requests must be positive")
    if opts.gateway_workers is not None and opts.gateway_workers < 1:
        raise ValueError("--gateway-workers must be >= 1")
    if opts.soak_seconds <= 0 or opts.soak_streams < 1 or not 0.0 <= opts.soak_disconnects <= 1.0:
        raise ValueError("--soak-seconds and --soak-streams must be positive, --soak-disconnects within 0..1")
    return opts


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop the processes


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = options_from(args)
    except ValueError as exc:
        print(f"python -m gateway.bench: {exc}", file=sys.stderr)
        return 2
    names = args.only or DEFAULT_SECTIONS
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (a `&` job)
    info = report.machine_info()
    started = time.perf_counter()
    results: dict = {}
    if names == ["soak"]:
        _progress(f"sections: soak; {opts.soak_streams} streams, {opts.soak_seconds:g} s, seed {opts.seed}")
    else:
        _progress(f"sections: {', '.join(n for n in SECTIONS if n in names)}; {opts.workload.describe()}; "
                  f"{opts.repeats} repeat(s)")
    try:
        with Procs() as procs:
            ctx = Context(procs, _progress)
            for name in SECTIONS:  # in the registry's order
                if name in names:
                    results[name] = SECTIONS[name](opts, ctx)
    except KeyboardInterrupt:
        print("\ninterrupted; every process the benchmark started is stopped", file=sys.stderr)
        return 130
    except (BenchError, LoadGenError) as exc:
        print(f"python -m gateway.bench: {exc}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    sys.stdout.write(report.render(info, results, wall))
    if args.json:
        report.write_json(args.json, info, results, dataclasses.asdict(opts), wall)
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
