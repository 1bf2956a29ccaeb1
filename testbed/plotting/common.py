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

FLOOR = 1e-16  # log-axis floor: exact updates reach J* to machine precision
LOG_Y = {"suboptimality", "kl_reg_gap", "loss", "exploitability", "exploitability_avg"}


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
    cfg_path = run_dir / "config.yaml"
    if run_dir.is_file():
        raise InputError(f"{str(run_dir)!r} is a file, not a run folder")
    if not run_dir.exists():
        raise InputError(f"run folder {str(run_dir)!r} does not exist")
    if not cfg_path.is_file():
        raise InputError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    return yaml.safe_load(cfg_path.read_text())



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


def _load(run_dir: Path) -> tuple[dict, dict, dict]:
    """config, runs by id, and each run's metric rows."""
    config = read_config(run_dir)
    per_run = defaultdict(list)
    for r in read_metrics(run_dir):
        per_run[r["run_id"]].append(r)
    return config, {r["run_id"]: r for r in config["runs"]}, per_run


def _final(per_run: dict, run_ids: list[str], key: str) -> np.ndarray:
    return np.array([per_run[i][-1][key] for i in run_ids], dtype=float)


