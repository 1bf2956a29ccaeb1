"""Golden results: the fast subset matches the stored summaries; a changed default shows up as a diff."""

import dataclasses
import sys
from pathlib import Path

import pytest

from testbed.algorithms import REBEL
from testbed.algorithms.base import one_of
from testbed.algorithms.rebel import Y_PRIME, REBELConfig
from testbed.cli import main
from testbed.experiments import golden

ROOT = Path(__file__).resolve().parents[1]


def check(tmp_path, *extra):
    return main(["reproduce", "--check", "--fast", "--experiments", str(ROOT / "experiments"),
                 "--runs", str(tmp_path / "runs"), "--quiet", *extra])


def test_fast_subset_matches_its_golden_summaries(tmp_path, capsys):
    assert check(tmp_path) == 0
    out = capsys.readouterr().out
    assert "golden check:" in out and "OK" in out and "moved" not in out


@dataclasses.dataclass
class ChangedREBELConfig(REBELConfig):
    y_prime: str = one_of("uniform", Y_PRIME, "changed default")


# checkpoints store testbed classes only (testbed/training/checkpoint.py): the fixture lives, for the
# duration of the test, in REBEL's module
ChangedREBELConfig.__module__ = "testbed.algorithms.rebel"


def test_a_changed_default_hyper_parameter_fails_with_a_readable_diff(tmp_path, capsys, monkeypatch):
    """REBEL's default y' distribution changed from pi_t to uniform in a fixture: the sampled REBEL rows
    of the fast subset move, and the diff names them."""

    monkeypatch.setattr(REBEL, "Config", ChangedREBELConfig)
    monkeypatch.setattr(sys.modules[REBEL.__module__], "ChangedREBELConfig", ChangedREBELConfig, raising=False)
    assert check(tmp_path, "--jobs", "1") == 1
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err == ""  # a failed check, not an error
    assert "golden check:" in out and "FAILED" in out
    assert "value(s) moved beyond tolerance" in out and "rebel-sampled" in out
    header = next(line for line in out.splitlines() if "problem" in line and "column" in line)
    assert {"golden", "now", "tolerance"} <= set(header.split())


def test_compare_flags_moves_beyond_tolerance_only():
    tol = {c: {"rtol": 1e-6, "atol": 1e-9} for c in golden.VALUES}
    row = {"problem": "p", "algorithm": "a", "iteration": 5, **{c: None for c in golden.VALUES}, "reward": 0.5}
    assert golden.compare([row], [dict(row, reward=0.5 + 1e-10)], tol) == []
    d = golden.compare([row], [dict(row, reward=0.5001)], tol)
    assert len(d) == 1 and d[0]["column"] == "reward" and d[0]["golden"] == 0.5
    d = golden.compare([row], [dict(row, iteration=6)], tol)
    assert [x["column"] for x in d] == ["(row)", "(row)"]


def test_compare_flags_a_nan_on_either_side():
    """A NaN compared with anything made every inequality False, so it passed silently (inf was caught)."""
    tol = {c: {"rtol": 1e-6, "atol": 1e-9} for c in golden.VALUES}
    row = {"problem": "p", "algorithm": "a", "iteration": 5, **{c: None for c in golden.VALUES}, "reward": 0.5}
    nan = dict(row, reward=float("nan"))
    for g, n in ((row, nan), (nan, row), (nan, nan)):
        d = golden.compare([g], [n], tol)
        assert len(d) == 1 and d[0]["column"] == "reward"
    chaotic = dict(row, reward=0.5, _n=5, _sd={"reward": float("nan")})  # a NaN seed interval: no pass either
    assert len(golden.compare([row], [chaotic], tol, {"a"})) == 1


@pytest.mark.parametrize("its,expected", [([0, 1, 2, 3], [0, 1, 2, 3]),
                                          (list(range(0, 201)), None)])
def test_checkpoints_include_first_and_last(its, expected):
    got = golden.checkpoints(its)
    assert got[0] == its[0] and got[-1] == its[-1] and len(got) <= golden.CHECKPOINTS
    if expected is not None:
        assert got == expected
