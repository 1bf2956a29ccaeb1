"""Figures and the table of a diffusion study run folder (``testbed reproduce --diffusion``): eval reward vs
reward queries with seed bands (the paper's image figure), image grids (the reference vs each algorithm, same
prompts and noise), and a table (final reward with a 95% interval over seeds, KL to the reference, peak memory,
s/iteration, models held). Reads metrics.csv, timings.json, meta.json and samples/*.npz only."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from testbed.io import atomic_write_text  # noqa: E402
from testbed.plotting.common import save_figure  # noqa: E402
from testbed.plotting.llm import read_lm_metrics, seconds_per_iteration  # noqa: E402


def _by_algorithm(run_dir) -> dict[str, dict[int, list[dict]]]:
    out: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    for rows in read_lm_metrics(run_dir).values():
        out[rows[0]["algorithm"]][rows[0]["seed"]] = rows
    return dict(out)


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval over seeds (0 for one seed)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def plot_reward(run_dir: str | Path, out: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for algo, seeds in _by_algorithm(run_dir).items():
        evals = [[r for r in rows if r["eval/scores"] is not None] for rows in seeds.values()]
        n = min(len(e) for e in evals)
        x = np.array([r["queries"] for r in evals[0][:n]])
        y = np.array([[r["eval/scores"] for r in e[:n]] for e in evals])
        m = y.mean(0)
        ci = np.array([mean_ci(col)[1] for col in y.T])
        ax.plot(x, m, label=f"{algo.upper()} ({len(evals)} seeds)")
        ax.fill_between(x, m - ci, m + ci, alpha=0.2)
    ax.set_xlabel("reward queries")
    ax.set_ylabel("eval reward (fixed prompts and noise)")
    ax.set_title(_title(run_dir))
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out))


def plot_samples(run_dir: str | Path, out: str | Path, seed: int | None = None, columns: int = 10) -> Path:
    run_dir = Path(run_dir)
    algos = _by_algorithm(run_dir)
    seed = min(next(iter(algos.values()))) if seed is None else seed
    grids = [("reference", np.load(run_dir / "samples" / f"reference-s{seed}.npz")["images"])]
    for algo, seeds in algos.items():
        grids.append((algo.upper(), np.load(run_dir / "samples" / f"{seeds[seed][0]['run_id']}.npz")["images"]))
    fig, axes = plt.subplots(len(grids), 1, figsize=(columns * 0.6, len(grids) * 0.85))
    for ax, (name, imgs) in zip(np.atleast_1d(axes), grids):
        row = np.concatenate([np.pad(np.clip(i[0], -1, 1), 1, constant_values=1) for i in imgs[:columns]], 1)
        ax.imshow(row, cmap="gray", vmin=-1, vmax=1)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{_title(run_dir)}: same prompts and noise (seed {seed})", fontsize=9)
    return save_figure(fig, Path(out))


def table(run_dir: str | Path, out: str | Path, wall_seconds: float | None = None) -> Path:
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    held = meta.get("models_held", {})
    algos = _by_algorithm(run_dir)
    # equal reward queries: every algorithm at the last evaluation within the smallest final query count
    budget = min(rows[-1]["queries"] for seeds in algos.values() for rows in seeds.values())
    lines = [f"| algorithm | seeds | eval reward at {budget} queries (95% CI) | start | gain (95% CI) | KL to ref "
             "(exact, nats) | peak memory MB (median run) | s/iteration | models held |", "|---|---|---|---|---|---|---|---|---|"]
    for algo, seeds in algos.items():
        final = [[r for r in rows if r["eval/scores"] is not None and r["queries"] <= budget][-1]
                 for rows in seeds.values()]
        m, h = mean_ci([r["eval/scores"] for r in final])
        g, gh = mean_ci([f["eval/scores"] - rows[0]["eval/scores"] for f, rows in zip(final, seeds.values())])
        start = np.mean([rows[0]["eval/scores"] for rows in seeds.values()])
        kl, klh = mean_ci([r["eval/kl"] for r in final])
        mem = float(np.median([max(r["peak_memory_mb"] or 0 for r in rows) for rows in seeds.values()]))
        spi = np.mean([seconds_per_iteration(rows) for rows in seeds.values()])
        lines.append(f"| {algo.upper()} | {len(seeds)} | {m:.4g} ± {h:.2g} | {start:.4g} | {g:+.4f} ± {gh:.4f} | "
                     f"{kl:.3g} ± {klh:.2g} | "
                     f"{mem:.0f} | {spi:.2f} | {held.get(algo, '')} |")
    if wall_seconds is not None:
        lines.append(f"\nStudy wall time: {wall_seconds / 60:.1f} min (pre-training included unless cached).")
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    return Path(out)


def _title(run_dir) -> str:
    return json.loads((Path(run_dir) / "meta.json").read_text()).get("spec", Path(run_dir).name)
