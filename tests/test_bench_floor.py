"""The bench's floor (``gateway.bench.floor``): the bare aiohttp relay whose CPU per token the
bench reports as the least any aiohttp relay pays. Its figure means something only if it relays
the whole stream, so: real processes (the bench's fake vLLM and the floor), real sockets, and the
body through the floor byte for byte the body straight from the upstream."""

from __future__ import annotations

import urllib.request

from gateway.bench.procs import Procs
from gateway.bench.workload import Workload


def _post(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return response.read()


def test_the_floor_relays_the_upstreams_stream_byte_for_byte() -> None:
    workload = Workload("text", 64, 1)
    path = workload.path_for("w") + "/v1/chat/completions"
    with Procs() as procs:
        upstream = procs.upstream(max_seconds=120)
        floor = procs.floor(upstream.url)
        with urllib.request.urlopen(floor.url + "/health", timeout=10) as health:
            assert health.status == 200
        direct = _post(upstream.url + path, workload.chat_request())
        relayed = [_post(floor.url + path, workload.chat_request()) for _ in range(3)]  # and on a kept connection
    assert direct.endswith(b"data: [DONE]\n\n") and direct.count(b"\n\ndata: ") >= 64
    assert all(body == direct for body in relayed)


def test_the_split_recovers_a_requests_cost_and_a_tokens_from_two_lengths() -> None:
    """``split_figures``: per repeat, the line through (16 tokens, cost) and (256 tokens, cost)."""
    from gateway.bench.sections import split_figures

    def run(per_request: float, per_token: float, tokens: int) -> dict:
        return {"cpu_us_per_token_gateway": (per_request + per_token * tokens) / tokens}

    runs = {16: [run(900, 5, 16), run(1000, 4, 16), run(950, 6, 16)],
            256: [run(900, 5, 256), run(1000, 4, 256), run(950, 6, 256)]}
    figures = split_figures(runs, 16, 256)
    assert [round(v, 6) for v in figures["per_request_runs"]] == [900, 1000, 950]
    assert [round(v, 6) for v in figures["per_token_runs"]] == [5, 4, 6]
    assert round(figures["per_request_us"], 6) == 950 and round(figures["per_token_us"], 6) == 5


def _results(floor_cpu: float, pipeline: float, floor_added_ms: float, tokens_per_chunk: int = 1) -> dict:
    """A floor section whose repeats took ``floor_cpu`` (and 20 % more, twice), and a machine section
    whose best pipeline repeat is ``pipeline`` (its median 50 % more): the bound takes the fastest."""
    runs = [{"cpu_us_per_token_gateway": floor_cpu * k} for k in (1.2, 1, 1.2)]
    pairs = [{"floor_added_delta_p50_ms": floor_added_ms * k} for k in (1.2, 1, 1.2)]  # against each repeat's direct
    level = {"floor": {"median": {"cpu_us_per_token_gateway": floor_cpu * 1.2}, "runs": runs}, "pairs": pairs,
             "ratio": {"gateway_cpu_over_floor": 3.0, "floor_added_delta_p50_ms": floor_added_ms * 1.2,
                       "floor_events_s": 1.0}}
    return {"floor": {"workload": {"tokens_per_chunk": tokens_per_chunk}, "levels": {"64": level, "1": level}},
            "machine": {"tokens_per_chunk": tokens_per_chunk,
                        "mixes": {"text": {"machine": {"chunks_per_s": 1e6},
                                           "pipeline": {"us_per_chunk": pipeline * 1.5, "best_us_per_chunk": pipeline}}}}}


def test_the_targets_say_when_the_floor_and_the_pipeline_alone_exceed_a_target() -> None:
    """The claim "cannot be met on this machine" is made only when the bare relay's fastest repeat
    plus the pipeline's best is above the target, and only for one token per chunk."""
    from gateway.bench.report import _bound_note, targets

    assert _bound_note(_results(3.5, 2.0, 0.1), 64, 5.0, True).startswith("cannot be met on this machine")
    assert "= 5.50 µs" in _bound_note(_results(3.5, 2.0, 0.1), 64, 5.0, True)  # the fastest, not the median
    assert _bound_note(_results(2.5, 2.0, 0.1), 64, 5.0, True).startswith("lower bound on this machine")
    assert _bound_note(_results(3.5, 2.0, 0.1, tokens_per_chunk=4), 64, 5.0, True) == ""

    relay_level = {"direct": {"median": {"events_s": 400_000, "delta_p50_ms": 1.0}},
                   "gateway": {"median": {"events_s": 100_000, "tokens_s": 97_000}},
                   "ratio": {"gateway_cpu_us_per_token": 8.0, "events_s": 0.25, "added_delta_p50_ms": 0.6}}
    relay = {"workload": {"mix": "text", "tokens_per_chunk": 1}, "levels": {"64": relay_level, "1": relay_level}}
    # the floor's best repeat adds 0.35 ms (its median 0.42): over 0.3; 0.27 (median 0.324): not claimed
    for floor_added, says in ((0.35, True), (0.27, False)):
        rows = {row["target"]: row for row in targets({**_results(3.5, 2.0, floor_added), "relay": relay})}
        added = next(r for t, r in rows.items() if t.startswith("added first-delta"))
        assert ("no relay on aiohttp can meet this" in added["note"]) is says, added
        assert added["verdict"] == "MISSED"
