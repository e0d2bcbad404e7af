"""``gateway.bench.ab``: two gateways side by side, windows in turn. Its figure is a ratio of two
real gateways' CPU, so: real processes, real sockets, and a check that each side runs the checkout
it was given. Nothing here depends on how fast the machine is: the figures are only checked to
exist and to be positive."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bench import ab
from gateway.bench.procs import REPO, BenchError


def test_two_configurations_side_by_side_each_measured_in_every_round(capsys: pytest.CaptureFixture[str]) -> None:
    code = ab.main([str(REPO), "--b-set", "gateway.store=false", "--concurrency", "1,4", "--rounds", "2",
                    "--window", "0.3", "--tokens", "16"])
    assert code == 0
    out = capsys.readouterr().out
    assert "B: " in out and "gateway.store=false" in out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in ("1", "4")]
    assert [row[0] for row in rows] == ["1", "4"]
    for row in rows:
        a, b, ratio = (float(v) for v in row[1:4])
        assert a > 0 and b > 0 and ratio > 0
        assert row[-1] == "0/0"  # errors of A and B
    stored = [line for line in out.splitlines() if "responses stored" in line]
    a, b = (int(v.strip().replace(",", "")) for v in stored[0].split(":")[1].replace("A", "").split(", B"))
    assert a > 0 and b == 0  # the setting reached B alone, and each side stores into its own directory


def test_results_hold_every_window_and_the_ratio_of_each_round() -> None:
    results = ab.run(REPO, REPO, {"a": [], "b": []}, [2], rounds=3, window=0.3, tokens=16)
    level = results["levels"]["2"]
    assert len(level["a_us_per_token"]) == len(level["b_us_per_token"]) == len(level["b_over_a"]) == 3
    assert level["b_over_a"] == [b / a for a, b in zip(level["a_us_per_token"], level["b_us_per_token"])]
    assert level["errors"] == {"a": 0, "b": 0}
    assert results["stored"]["a"] > 0 and results["stored"]["b"] > 0  # both store by default, apart


def test_a_directory_that_is_not_a_checkout_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BenchError, match="not a checkout"):
        ab._checkout(str(tmp_path))
    assert ab.main([str(tmp_path)]) == 1
    assert "not a checkout of the gateway" in capsys.readouterr().err
    (tmp_path / "gateway").symlink_to(REPO / "gateway")  # another checkout's code: imported from here
    assert ab._checkout(str(tmp_path)) == tmp_path.resolve()


def test_bad_arguments_are_refused_with_a_usage_message(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([str(REPO), "--rounds", "0"], [str(REPO), "--concurrency", "0"], [str(REPO), "--b-set", "store"]):
        with pytest.raises(SystemExit) as exit_:
            ab.main(argv)
        assert exit_.value.code == 2
    assert "usage: python -m gateway.bench.ab" in capsys.readouterr().err
