"""Equal-budget tuning: a spec with a ``tune:`` block runs each method's grid on tuning seeds, picks one
setting per method, and reports the picks on fresh seeds.

Protocol (what ``testbed reproduce`` runs for ``experiments/compare_tuned.yaml``):

1. Each algorithm entry's lists are that method's grid; every entry must have a grid of the same
   size (equal tuning budget). The whole grid runs on ``tune.seeds`` only → ``<out>-tuning/``.
2. Selection (:func:`select`) reads only the rows of the tuning seeds: for each method (entry), the
   point with the least mean over problems of the mean over tuning seeds of the *normalised final
   sub-optimality* (J* − J(π_T)) / (J* − J(π_0)); ties go to the first point in grid order. One
   setting per method for all problems (a benchmark-level choice, as on Atari).
3. The picked settings run on the reporting ``seeds`` (disjoint from the tuning seeds, checked when
   the spec is read) → ``<out>/``, a run folder like any other, labelled by method.

``<out>-selection.yaml`` (next to both run folders, so that each stays a plain run folder that
``--overwrite`` may replace) records every point's tuning score and the pick
(:func:`testbed.plotting.aggregate.read_selection`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from testbed.errors import InputError
from testbed.experiments.runner import run_spec
from testbed.experiments.spec import Spec, _grid, parse_spec
from testbed.io import atomic_write_text
from testbed.plotting.aggregate import selection_path
from testbed.results import read_metrics


def _sub_spec(spec: Spec, **changes) -> Spec:
    data = {k: v for k, v in spec.data.items() if k != "tune"} | changes
    base = Path(spec.source).parent if spec.source and Path(spec.source).exists() else None
    return parse_spec(data, spec.source or "<spec>", base)


def _entries(spec: Spec) -> list[tuple[str, dict, list[dict], list[str]]]:
    """(method label, entry, grid points, swept keys) per algorithm entry; the label is the entry's
    ``label`` or the base label the spec gives it."""
    out = []
    for i, entry in enumerate(spec.data["algorithms"]):
        points, swept = _grid(entry)
        one = _sub_spec(spec, algorithms=[points[0]], seeds=[0], plot={"kind": "table"})
        out.append((one.runs[0].base_label, entry, points, swept))
        if len(points) != len(out[0][2]):
            raise InputError(f"spec {spec.source}: tune: algorithms[{i}] has a grid of {len(points)} points and "
                             f"algorithms[0] one of {len(out[0][2])}; equal-budget tuning needs grids of the same size")
    labels = [o[0] for o in out]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise InputError(f"spec {spec.source}: tune: method label(s) {dup} name more than one algorithm entry; "
                         "give each entry its own 'label'")
    return out


def tuning_spec(spec: Spec) -> Spec:
    """The whole grid on the tuning seeds, each entry labelled by its method."""
    algos = [dict(entry, label=label) for label, entry, _, _ in _entries(spec)]
    return _sub_spec(spec, name=f"{spec.name}-tuning", algorithms=algos, seeds=spec.tune["seeds"])


def normalised_final(rows: list[dict], seeds: set[int] | None = None) -> dict[tuple[str, str], dict[int, float]]:
    """(problem, run label) → seed → (J* − J(π_T)) / (J* − J(π_0)) from metric rows (first and last row of
    each run), only for ``seeds`` when given."""
    first, last = {}, {}
    for r in rows:
        if seeds is not None and r["seed"] not in seeds:
            continue
        first.setdefault(r["run_id"], r)
        last[r["run_id"]] = r
    out: dict = defaultdict(dict)
    for run_id, r in last.items():
        gap0 = first[run_id]["suboptimality"]
        if gap0 is None or r["suboptimality"] is None:
            continue
        label = run_id.split(":")[1]
        out[(r["problem"], label)][r["seed"]] = r["suboptimality"] / gap0 if gap0 > 0 else 0.0
    return dict(out)


def select(rows: list[dict], grids: dict[str, list[str]], tuning_seeds: list[int]) -> dict[str, dict]:
    """The pick per method: ``grids`` maps a method to its points' run labels in grid order. Reads the
    rows of ``tuning_seeds`` only (rows of any other seed are dropped before anything is computed).
    Returns method → {"label": picked label, "scores": {label: mean normalised final sub-optimality}}."""
    scores = normalised_final(rows, set(tuning_seeds))
    picks = {}
    for method, labels in grids.items():
        per = {}
        for label in labels:
            by_problem = [np.mean(list(v.values())) for (p, lab), v in sorted(scores.items()) if lab == label]
            if not by_problem:
                raise InputError(f"tuning: no rows of {label!r} on the tuning seeds {tuning_seeds}")
            per[label] = float(np.mean(by_problem))
        best = min(labels, key=lambda lab: (per[lab], labels.index(lab)))
        picks[method] = {"label": best, "scores": per}
    return picks


def _point_label(method: str, point: dict, swept: list[str]) -> str:
    keys = [k for k in swept if k not in ("name", "label")]
    return method + ("(" + ",".join(f"{k}={point[k]}" for k in keys) + ")" if keys else "")


def run_tuned(spec: Spec, out: str | Path, overwrite: bool = True, progress: bool = True, jobs: int = 1,
              backend: str = "local") -> Path:
    """Tune on ``spec.tune['seeds']`` (run folder ``<out>-tuning``), then run the picks on ``spec``'s seeds
    (run folder ``out``, returned). ``<out>-selection.yaml`` holds the scores and picks."""
    out = Path(out)
    entries = _entries(spec)
    tune_dir = run_spec(tuning_spec(spec), out.parent / f"{out.name}-tuning", overwrite=overwrite, progress=progress,
                        jobs=jobs, backend=backend)
    grids = {m: [_point_label(m, p, swept) for p in points] for m, _, points, swept in entries}
    picks = select(read_metrics(tune_dir), grids, spec.tune["seeds"])
    chosen = []
    for method, _, points, swept in entries:
        point = points[grids[method].index(picks[method]["label"])]
        picks[method]["setting"] = {k: point[k] for k in swept if k not in ("name", "label")}
        chosen.append(dict(point, label=method))
    atomic_write_text(selection_path(out), yaml.safe_dump(
        {"rule": "least mean over problems of the mean over tuning seeds of the normalised final sub-optimality",
         "tuning_seeds": spec.tune["seeds"], "reporting_seeds": sorted({r.seed for r in spec.runs}),
         "methods": picks}, sort_keys=False))
    report = _sub_spec(spec, algorithms=chosen)
    return run_spec(report, out, overwrite=overwrite, progress=progress, jobs=jobs, backend=backend)

