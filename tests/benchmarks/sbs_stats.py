"""The statistics of the TRL side-by-side (trl_side_by_side.py): the rotated order of its interleaved rounds,
the median and spread of a row's repeats, and the floor: an estimate of a lower bound of the work it stands for
(the fastest repeat of each part).

Standard library only: the parent of the side-by-side imports it, whatever interpreter runs it.
"""

from __future__ import annotations

from statistics import median


def rotations(rows: list, repeats: int) -> list[list]:
    """The order of each of ``repeats`` rounds: round i runs ``rows`` rotated left by floor(i·n / repeats), so
    the shifts are spread over the n rows and no row always goes first; when ``repeats`` is a multiple of n,
    each row runs at each position the same number of times (once each when repeats = n)."""
    if repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    n = len(rows)
    if not n:
        return [[] for _ in range(repeats)]
    return [rows[s:] + rows[:s] for s in ((i * n // repeats) % n for i in range(repeats))]


def spread_pct(values: list[float]) -> float:
    """(max - min) / median of the repeats, in percent (0 for one repeat)."""
    return 100.0 * (max(values) - min(values)) / median(values)


def summary(values: list[float]) -> dict:
    """Median, fastest, slowest and spread of a row's repeats."""
    if not values:
        raise ValueError("no repeats to summarise")
    return {"median": median(values), "min": min(values), "max": max(values), "spread_pct": spread_pct(values),
            "n": len(values)}


def floor_bound(parts: dict[str, list[float]], counts: dict[str, int]) -> float:
    """The floor: the sum over the parts of (times the part runs in one step) x (its fastest repeat). Each part
    is timed alone, so no repeat of the whole work can beat it unless a part ran faster than it ever did alone."""
    missing = sorted(set(counts) - set(parts))
    if missing:
        raise ValueError(f"floor parts without timings: {', '.join(missing)}")
    return sum(c * min(parts[k]) for k, c in counts.items())


def below_floor(times: dict[str, list[float]], floor: float, rows: tuple[str, ...]) -> list[str]:
    """A warning for each of ``rows`` (those doing the floor's work) whose fastest repeat is below the floor."""
    return [f"WARNING: {r} measured {min(times[r]):.3f} s/step (fastest of {len(times[r])}), below the floor "
            f"{floor:.3f} s of its own work: the floor is not a lower bound here (a noisy machine?)"
            for r in rows if r in times and min(times[r]) < floor]
