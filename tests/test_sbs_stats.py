"""The statistics of the TRL side-by-side (tests/benchmarks/sbs_stats.py) on small exact examples."""

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("sbs_stats", Path(__file__).parent / "benchmarks" / "sbs_stats.py")
sbs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sbs)


def test_median_and_spread_of_repeats():
    s = sbs.summary([4.6, 4.4, 5.5])
    assert s == {"median": 4.6, "min": 4.4, "max": 5.5, "spread_pct": pytest.approx(100 * 1.1 / 4.6, abs=1e-12), "n": 3}
    even = sbs.summary([1.0, 4.0, 2.0, 3.0])  # an even count: the mean of the two middle values
    assert even["median"] == 2.5 and even["spread_pct"] == pytest.approx(120.0, abs=1e-12)
    assert sbs.summary([2.0])["spread_pct"] == 0.0
    with pytest.raises(ValueError, match="no repeats"):
        sbs.summary([])


@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_rotations_put_each_row_at_each_position_once(n):
    rows = [f"r{i}" for i in range(n)]
    order = sbs.rotations(rows, n)
    assert all(sorted(o) == rows for o in order)  # every round runs every row once
    for pos in range(n):
        assert sorted(o[pos] for o in order) == rows  # each row at each position exactly once
    assert sbs.rotations(rows, 2 * n) == [o for o in order for _ in range(2)]  # a multiple of n: twice each


def test_rotations_with_fewer_rounds_than_rows_spread_the_shifts():
    rows = list("abcdefghi")
    order = sbs.rotations(rows, 3)  # shifts 0, 3, 6
    assert [o[0] for o in order] == ["a", "d", "g"]
    assert order[1] == list("defghiabc")
    positions = {r: [o.index(r) for o in order] for r in rows}
    assert positions["a"] == [0, 6, 3] and all(len(set(p)) == 3 for p in positions.values())
    firsts = Counter(o[0] for o in sbs.rotations(rows, 2))
    assert max(firsts.values()) == 1  # no row goes first twice
    with pytest.raises(ValueError, match="repeats"):
        sbs.rotations(rows, 0)


def test_floor_is_the_sum_of_fastest_parts_and_below_every_repeat():
    parts = {"generate": [3.0, 2.5, 2.75], "forward_nograd": [0.5, 0.75, 0.25], "forward_backward_adamw": [1.5, 1.25, 2.0]}
    counts = {"generate": 1, "forward_nograd": 1, "forward_backward_adamw": 1}
    floor = sbs.floor_bound(parts, counts)
    assert floor == 2.5 + 0.25 + 1.25
    for j in range(3):  # each repeat's own sum of its parts is at least the floor
        assert sum(parts[k][j] for k in counts) >= floor
    assert sbs.floor_bound(parts, {**counts, "forward_nograd": 2}) == floor + 0.25  # two no-grad forwards
    with pytest.raises(ValueError, match="forward_nograd"):
        sbs.floor_bound({"generate": [1.0]}, counts)


def test_warning_when_a_row_of_the_floor_work_beats_the_floor():
    times = {"rebel": [4.1, 3.9, 4.3], "rebel_mb8": [4.5, 4.6, 4.4], "rebel4": [1.0]}
    warn = sbs.below_floor(times, 4.0, ("rebel", "rebel_mb8", "absent"))
    assert len(warn) == 1 and warn[0].startswith("WARNING: rebel measured 3.900 s/step") and "below the floor 4.000" in warn[0]
    assert sbs.below_floor(times, 3.9, ("rebel", "rebel_mb8")) == []  # equal to the floor is not below it
