"""What every figure shares: reading a run folder (config.yaml, metrics.csv through testbed.results),
the seed band (mean over seeds, 95% percentile bootstrap), legends and atomic PNG writing."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import bootstrap  # noqa: E402

from testbed.errors import InputError  # noqa: E402
from testbed.io import atomic_write  # noqa: E402
from testbed.results import read_metrics  # noqa: E402

FLOOR = 1e-16  # log-axis floor: exact updates reach J* to machine precision (0 included)
LOG_Y = {"suboptimality", "kl_reg_gap", "loss", "exploitability", "exploitability_avg"}
"""Metrics drawn on a log axis (values below FLOOR, 0 included, at FLOOR) — unless a plotted value is negative:
then a linear axis, values unclipped (plot_run)."""


def seed_band(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) with a 95% percentile-bootstrap interval per column."""
    mean = values.mean(axis=0)
    lo, hi = mean.copy(), mean.copy()
    vary = np.all(np.isfinite(values), axis=0) & np.any(values != values[:1], axis=0)
    if values.shape[0] < 2 or not vary.any():
        return mean, lo, hi
    res = bootstrap((values[:, vary],), np.mean, axis=0, vectorized=True, confidence_level=0.95, n_resamples=2000,
                    method="percentile", rng=np.random.default_rng(seed))
    lo[vary], hi[vary] = res.confidence_interval.low, res.confidence_interval.high
    return mean, lo, hi



def read_config(run_dir: Path) -> dict:
    """A run folder's config.yaml (the resolved spec): a mapping, or an InputError naming the file."""
    cfg_path = run_dir / "config.yaml"
    if run_dir.is_file():
        raise InputError(f"{str(run_dir)!r} is a file, not a run folder")
    if not run_dir.exists():
        raise InputError(f"run folder {str(run_dir)!r} does not exist")
    if not cfg_path.is_file():
        raise InputError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    expected = "expected the resolved spec a run writes (a mapping: name, problems, runs, ...)"
    try:
        config = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise InputError(f"{cfg_path}: not valid YAML ({getattr(e, 'problem', None) or 'unreadable'}"
                         + (f" at line {where.line + 1}" if where else "") + f"); {expected}") from None
    if not isinstance(config, dict):
        raise InputError(f"{cfg_path}: " + ("empty" if config is None else f"a {type(config).__name__}") + f"; {expected}")
    return config


def legend_entries(axes) -> tuple[list, list[str]]:
    """Each labelled artist of the axes once, in order of first appearance (one legend per figure)."""
    handles: dict = {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    return list(handles.values()), list(handles)


def _legend_below(fig, axes, columns: int) -> None:
    handles, labels = legend_entries(axes)
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", ncol=max(1, min(3, columns)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))


def save_figure(fig, out: Path, tight: bool = True) -> Path:
    """Write the PNG atomically (110 dpi; cropped to its content unless ``tight`` is False) and close it."""
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png", bbox_inches="tight" if tight else None))
    plt.close(fig)
    return out


def listed_runs(run_dir: Path, config: dict) -> dict:
    """config.yaml's runs by id; an InputError unless it holds a 'runs' list of runs with a run_id."""
    listed = config.get("runs")
    if not isinstance(listed, list) or not all(isinstance(r, dict) and "run_id" in r for r in listed):
        raise InputError(f"{run_dir / 'config.yaml'}: no 'runs' list of runs with a run_id; expected the resolved "
                         "spec of a bandit or preference run (testbed run)")
    return {r["run_id"]: r for r in listed}


def _load(run_dir: Path, config: dict | None = None) -> tuple[dict, dict, dict]:
    """config (``config``: the folder's, already read), runs by id, and each run's metric rows; a metrics row whose
    run is not in config.yaml's ``runs`` (or no ``runs`` list) is an InputError."""
    config = read_config(run_dir) if config is None else config
    runs = listed_runs(run_dir, config)
    per_run = defaultdict(list)
    for r in read_metrics(run_dir):
        if r["run_id"] not in runs:
            raise InputError(f"{run_dir / 'metrics.csv'}: run_id {r['run_id']!r} is not one of config.yaml's runs "
                             f"(expected one of {', '.join(sorted(runs)[:3])}{', ...' if len(runs) > 3 else ''})")
        per_run[r["run_id"]].append(r)
    return config, runs, per_run


def require_values(per_run: dict, columns: tuple[str, ...], run_dir: Path, kind: str) -> None:
    """An InputError unless every one of ``columns`` has a value in some row of the run folder (``kind``: the
    figure or table that needs them)."""
    for c in columns:
        if not any(r.get(c) is not None for rows in per_run.values() for r in rows):
            raise InputError(f"{run_dir / 'metrics.csv'}: no {c!r} values; --kind {kind} needs a run folder whose "
                             f"runs record {', '.join(columns)} (a bandit run with a reward oracle)")


def _final(per_run: dict, run_ids: list[str], key: str) -> np.ndarray:
    return np.array([per_run[i][-1][key] for i in run_ids], dtype=float)


