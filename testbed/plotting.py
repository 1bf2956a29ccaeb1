"""Figures from run folders: reads config.yaml and metrics.csv, never live objects (bsuite style).

Lines are means over seeds with 95% percentile-bootstrap bands (scipy.stats.bootstrap, as
rliable recommends intervals over bare means); the theory bound is overlaid where it applies.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import bootstrap  # noqa: E402

from testbed.errors import InputError, choice  # noqa: E402
from testbed.experiments.runner import read_metrics  # noqa: E402
from testbed.io import atomic_write  # noqa: E402

FLOOR = 1e-16  # log-axis floor: exact updates reach J* to machine precision
LOG_Y = {"suboptimality", "kl_reg_gap", "loss", "exploitability", "exploitability_avg"}


def seed_band(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (axis 0) with a 95% percentile-bootstrap interval per column."""
    mean = values.mean(axis=0)
    if values.shape[0] < 2 or np.all(values == values[:1]):
        return mean, mean, mean
    res = bootstrap((values,), np.mean, axis=0, vectorized=True, confidence_level=0.95, n_resamples=2000,
                    method="percentile", rng=np.random.default_rng(seed))
    return mean, res.confidence_interval.low, res.confidence_interval.high


def _line_name(run: dict, panel_by: str | None) -> str:
    mode = run["config"].get("mode")
    base = run["algorithm"] + (f"-{mode}" if mode else "")
    if run["label"].split("(")[0] != base:  # a user-given label
        base = run["label"].split("(")[0]
    rest = [f"{k}={v}" for k, v in run["swept"].items() if k != panel_by]
    return base + (f" ({', '.join(rest)})" if rest else "")


def read_config(run_dir: Path) -> dict:
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    return yaml.safe_load(cfg_path.read_text())


def plot_run(run_dir: str | Path, out: str | Path | None = None, panel_by: str | None = None,
             x: str | None = None, y: str | None = None, kind: str | None = None) -> Path:
    """Draw a run folder. ``kind`` (default: the spec's ``plot.kind``, else ``curves``) picks the figure:
    ``curves`` (a metric vs iteration/samples), or one of the preference figures of
    :mod:`testbed.plotting_preference` (``simplex``, ``exploitability``, ``eps_sweep``)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    opts = config.get("plot") or {}
    kind = choice("--kind", kind or opts.get("kind", "curves"), ("curves", "simplex", "exploitability", "eps_sweep"))
    if kind != "curves":
        from testbed import plotting_preference

        return getattr(plotting_preference, f"plot_{kind}")(run_dir, config, out)
    panel_by = panel_by or opts.get("panel_by")
    x = choice("--x", x or opts.get("x", "iteration"), ("iteration", "samples"))
    y = choice("--y", y or opts.get("y", "suboptimality"), ("suboptimality", "reward", "kl_ref", "kl_reg_gap", "loss",
                                                            "exploitability", "exploitability_avg"))
    runs = {r["run_id"]: r for r in config["runs"]}
    rows = read_metrics(run_dir)

    def panel_value(run):
        if not panel_by:
            return None
        if panel_by in run["swept"]:
            return run["swept"][panel_by]
        return run["config"].get(panel_by)

    series = defaultdict(lambda: defaultdict(list))  # (problem, panel) -> line -> [(seed, xs, ys)]
    per_run = defaultdict(list)
    for r in rows:
        per_run[r["run_id"]].append(r)
    theory = {}
    for run_id, rr in per_run.items():
        run = runs[run_id]
        key = (run["problem"], panel_value(run))
        xs = np.array([np.nan if r[x] is None else r[x] for r in rr], dtype=float)
        ys = np.array([np.nan if r[y] is None else r[y] for r in rr], dtype=float)
        if np.all(np.isnan(xs)) or np.all(np.isnan(ys)):
            continue  # e.g. samples of an exact run, or the loss of NPG
        series[key][_line_name(run, panel_by)].append((xs, ys))
        if run.get("theory") and y == "suboptimality" and x == "iteration":
            theory.setdefault(key, {})[run["theory"]["eta"]] = run["theory"]
    if not series:
        raise InputError(f"no values of {y!r} against {x!r} in {str(run_dir)!r}")

    problems = sorted({k[0] for k in series})
    panels = sorted({k[1] for k in series}, key=lambda v: (v is None, v))
    fig, axes = plt.subplots(len(problems), len(panels), figsize=(4.2 * len(panels), 3.4 * len(problems)),
                             squeeze=False, sharey="row")
    colours = {}
    for i, prob in enumerate(problems):
        for j, pv in enumerate(panels):
            ax = axes[i][j]
            for line, members in sorted(series.get((prob, pv), {}).items()):
                n = min(len(m[1]) for m in members)
                xs = members[0][0][:n]
                vals = np.stack([m[1][:n] for m in members])
                if y in LOG_Y:
                    vals = np.maximum(vals, FLOOR)
                mean, lo, hi = seed_band(vals)
                c = colours.setdefault(line, f"C{len(colours) % 10}")
                style = "--" if line.startswith("npg") and "exact" in line else "-"
                ax.plot(xs, mean, style, color=c, label=f"{line} [{len(members)} seeds]", lw=1.6,
                        zorder=3 if style == "--" else 2)
                ax.fill_between(xs, lo, hi, color=c, alpha=0.2, lw=0)
            for eta, th in sorted(theory.get((prob, pv), {}).items()):
                T = np.arange(1, config["runs"][0]["iterations"] + 1, dtype=float)
                bound = (th["kl_star_init_over_eta"] + th["gap0"]) / T
                ax.plot(T, bound, ":", color="k", lw=1.2,
                        label="bound KL(π*‖π₀)/(ηT) + gap₀/T" + (f" (η={eta})" if pv is None else ""))
            if y in LOG_Y:
                ax.set_yscale("log")
            ax.set_title(f"{prob}" + (f"\n{panel_by} = {pv}" if panel_by else ""), fontsize=9)
            ax.set_xlabel(x)
            if j == 0:
                ax.set_ylabel(y + (" (J* − J(π_t))" if y == "suboptimality" else ""))
            ax.grid(alpha=0.3, which="both", lw=0.4)
    handles, labels = {}, []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=min(3, len(labels)),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0))
    fig.suptitle(f"{config['name']}: mean over seeds, 95% bootstrap band", fontsize=10)
    rows_legend = (len(labels) + 2) // 3
    fig.tight_layout(rect=(0, 0.03 + 0.035 * rows_legend * 3.4 / (3.4 * len(problems)), 1, 1))
    out = Path(out) if out else run_dir / f"{y}.png"
    atomic_write(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out
