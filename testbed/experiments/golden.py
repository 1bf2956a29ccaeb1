"""Golden results: a summary of every study stored in the repository, rechecked by
``testbed reproduce --check`` and rewritten, deliberately, by ``--update-golden``.

A summary row is (problem, algorithm, iteration) with the mean over seeds of each metric column, at a
few checkpoints of each run (the first, last and log-spaced evaluated iterations between). Tolerances
per column live in ``experiments/golden/tolerances.yaml`` (data, next to the summaries), as does the
``fast`` subset that the test suite checks on every CI run.

Runs whose trajectories are chaotic (a last-bit difference, e.g. another CPU's rounding, redirects
them: sampled PPO with a KL penalty on the frontier) are listed under ``chaotic`` in
tolerances.yaml with the reason. Their values are compared as seed statistics: the golden mean over
the n seeds must lie within the two-sided ``confidence`` interval of the difference of two n-seed
means, t_{n-1}·s·sqrt(2/n) with s the seed standard deviation of the run being checked (plus the
column's own tolerance). Counts (``samples``, ``queries``) are the same in every seed and stay exact.
Exact runs on neutrally stable dynamics (the rock-paper-scissors cycle: rounding accumulates as a
phase along the orbit, not as a different orbit) are listed under ``drifting`` with a relative
tolerance measured to hold with margin (a changed default moves them by O(1)).
``tests/test_golden_robust.py`` perturbs every run's initial parameters by one ulp
(``TESTBED_PERTURB_ULP``) and checks that the fast subset still passes.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from testbed.errors import InputError
from testbed.experiments.runner import read_metrics
from testbed.io import atomic_write_text

KEY = ("problem", "algorithm", "iteration")
VALUES = ("samples", "queries", "reward", "suboptimality", "kl_ref", "kl_reg_gap", "exploitability",
          "exploitability_avg", "loss")
CHECKPOINTS = 6


def checkpoints(iterations: list[int]) -> list[int]:
    """The first, the last and up to CHECKPOINTS log-spaced evaluated iterations in between."""
    its = sorted(set(iterations))
    if len(its) <= CHECKPOINTS:
        return its
    targets = np.geomspace(max(its[1], 1), its[-1], CHECKPOINTS - 1)
    picked = {its[0], its[-1]} | {min(its, key=lambda i, t=t: abs(math.log(max(i, 1)) - math.log(t))) for t in targets}
    return sorted(picked)


def summarise(run_dir: str | Path) -> list[dict]:
    """Mean over seeds of each metric at each checkpoint of each (problem, algorithm)."""
    groups = defaultdict(lambda: defaultdict(list))  # (problem, algorithm) -> iteration -> rows
    for r in read_metrics(run_dir):
        groups[(r["problem"], r["algorithm"])][r["iteration"]].append(r)
    out = []
    for (problem, algorithm), by_it in sorted(groups.items()):
        for it in checkpoints(list(by_it)):
            rows = by_it[it]
            rec = {"problem": problem, "algorithm": algorithm, "iteration": it, "_n": len(rows), "_sd": {}}
            for c in VALUES:
                vals = [r[c] for r in rows if r.get(c) is not None]
                rec[c] = float(np.mean(vals)) if len(vals) == len(rows) and vals else None
                rec["_sd"][c] = float(np.std(vals, ddof=1)) if rec[c] is not None and len(vals) > 1 else 0.0
            out.append(rec)
    return out


def write(rows: list[dict], path: str | Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(KEY + VALUES)
    for r in rows:
        w.writerow([r[k] for k in KEY] + ["" if r[c] is None else repr(r[c]) for c in VALUES])
    atomic_write_text(path, buf.getvalue())


def read(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{"problem": r["problem"], "algorithm": r["algorithm"], "iteration": int(r["iteration"]),
                 **{c: None if r.get(c, "") == "" else float(r[c]) for c in VALUES}} for r in csv.DictReader(f)]


def load_settings(golden_dir: Path) -> dict:
    """tolerances.yaml: ``columns: {name: {rtol, atol}}`` and ``fast: [spec names]``."""
    path = golden_dir / "tolerances.yaml"
    if not path.is_file():
        raise InputError(f"golden settings {str(path)!r} do not exist (run `testbed reproduce --update-golden`)")
    data = yaml.safe_load(path.read_text()) or {}
    cols = data.get("columns", {})
    for c in VALUES:
        if c not in cols or not {"rtol", "atol"} <= set(cols[c]):
            raise InputError(f"{str(path)!r}: columns.{c} needs rtol and atol")
    return data


def chaotic_algorithms(settings: dict, spec: str) -> set[str]:
    """The algorithm labels of ``spec`` whose runs are compared as seed statistics."""
    rows = (settings.get("chaotic") or {}).get("rows", [])
    return {r["algorithm"] for r in rows if r.get("spec") == spec}


def drifting_algorithms(settings: dict, spec: str) -> dict[str, float]:
    """The algorithm labels of ``spec`` whose exact runs drift (label → the relative tolerance they get)."""
    rows = (settings.get("drifting") or {}).get("rows", [])
    return {r["algorithm"]: float(r["rtol"]) for r in rows if r.get("spec") == spec}


def seed_interval(sd: float, n: int, confidence: float) -> float:
    """Half-width of the two-sided ``confidence`` interval of the difference of two means of n seeds
    with seed standard deviation sd: t_{n-1, (1+confidence)/2}·sd·sqrt(2/n)."""
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, n - 1) * sd * math.sqrt(2 / n)) if n > 1 else 0.0


def compare(golden: list[dict], now: list[dict], tolerances: dict, chaotic: set[str] = frozenset(),
            confidence: float = 0.999, drifting: dict[str, float] | None = None) -> list[dict]:
    """Every difference beyond tolerance: |now - golden| > atol + rtol·|golden| (plus, for an algorithm in
    ``chaotic``, the seed interval :func:`seed_interval` of the run being checked; for one in ``drifting``,
    rtol = max(rtol, its drift tolerance)), a NaN on either side, a value that appeared
    or disappeared, or a (problem, algorithm, iteration) row present on one side only."""
    g = {tuple(r[k] for k in KEY): r for r in golden}
    n = {tuple(r[k] for k in KEY): r for r in now}
    diffs = []
    for key in sorted(set(g) | set(n), key=str):
        if key not in n or key not in g:
            diffs.append({"key": key, "column": "(row)", "golden": "present" if key in g else "absent",
                          "now": "present" if key in n else "absent", "tolerance": ""})
            continue
        for c in VALUES:
            a, b = g[key][c], n[key][c]
            tol = tolerances[c]
            if drifting and key[1] in drifting:
                tol = {"atol": tol["atol"], "rtol": max(tol["rtol"], drifting[key[1]])}
            if a is None and b is None:
                continue
            ci = (seed_interval(n[key].get("_sd", {}).get(c, 0.0), n[key].get("_n", 1), confidence)
                  if key[1] in chaotic else 0.0)
            # "not <=": a NaN on either side (or in the seed interval) is a difference, never a silent pass
            if a is None or b is None or not abs(b - a) <= tol["atol"] + tol["rtol"] * abs(a) + ci:
                diffs.append({"key": key, "column": c, "golden": a, "now": b,
                              "tolerance": f"{tol['atol']:g} + {tol['rtol']:g}·|golden|"
                              + (f" + seed CI {ci:.3g}" if key[1] in chaotic else "")})
    return diffs


def format_diffs(spec: str, diffs: list[dict], limit: int = 25) -> str:
    """A readable table of what moved."""
    def fmt(v):
        return v if isinstance(v, str) else "" if v is None else f"{v:.6g}"

    lines = [f"{spec}: {len(diffs)} value(s) moved beyond tolerance",
             f"  {'problem':<28} {'algorithm':<34} {'iter':>5}  {'column':<18} {'golden':>12} {'now':>12}  tolerance"]
    for d in diffs[:limit]:
        p, a, it = d["key"]
        lines.append(f"  {p:<28} {a:<34} {it:>5}  {d['column']:<18} {fmt(d['golden']):>12} {fmt(d['now']):>12}  "
                     f"{d['tolerance']}")
    if len(diffs) > limit:
        lines.append(f"  ... and {len(diffs) - limit} more")
    return "\n".join(lines)
