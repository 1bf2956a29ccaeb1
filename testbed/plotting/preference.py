"""Figures of preference runs, drawn from run folders only (config.yaml, metrics.csv, policies.npz,
trajectory.csv), never from live objects.

- ``simplex``: trajectories of the last iterate (solid) and the average iterate (dashed) on the
  3-action simplex, one panel per (problem, algorithm), with the minimax winner (star);
- ``exploitability``: expl of the last (solid) and average (dashed) iterate vs T on log–log axes,
  mean over seeds with 95% bootstrap bands, the Hedge regret bound (L/eta + eta·T/8)/T dotted (L = E_x max_y ln(1/pi_0));
- ``eps_sweep``: the NLHF ε-example — final mass on each action vs ε per algorithm (each
  algorithm's ``report_iterate``: average for self-play, last otherwise) and the minimax winner.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from testbed.errors import InputError  # noqa: E402
from testbed.plotting.common import FLOOR, _load, legend_entries, save_figure, seed_band  # noqa: E402

VERTICES = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
ACTION_NAMES = {"rps": ("rock", "paper", "scissors"), "dice": ("{2,4,9}", "{1,6,8}", "{3,5,7}")}


def _legend(fig, axes, ncol: int = 3) -> int:
    handles, labels = legend_entries(axes)
    fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)),
               fontsize=8, frameon=False)
    return (len(labels) + ncol - 1) // ncol


def read_trajectory(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """trajectory.csv → run_id → {iteration [T], prob [T, X, Y], avg_prob [T, X, Y] (nan where empty)}."""
    path = run_dir / "trajectory.csv"
    if not path.is_file():
        raise InputError(f"{str(run_dir)!r} has no trajectory.csv (set 'trajectories: true' in the spec)")
    cells: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = defaultdict(dict)
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            key = (int(r["iteration"]), int(r["context"]), int(r["action"]))
            cells[r["run_id"]][key] = (float(r["prob"]), float(r["avg_prob"]) if r["avg_prob"] else np.nan)
    out = {}
    for run_id, c in cells.items():
        its = sorted({k[0] for k in c})
        X, Y = max(k[1] for k in c) + 1, max(k[2] for k in c) + 1
        prob, avg = np.full((len(its), X, Y), np.nan), np.full((len(its), X, Y), np.nan)
        index = {t: i for i, t in enumerate(its)}
        for (t, x, y), (p, a) in c.items():
            prob[index[t], x, y], avg[index[t], x, y] = p, a
        out[run_id] = {"iteration": np.array(its), "prob": prob, "avg_prob": avg}
    return out


def _to_plane(p: np.ndarray) -> np.ndarray:
    return p @ VERTICES


def _line(run: dict) -> str:
    return run["label"]


def plot_simplex(run_dir: Path, config: dict, out: str | Path | None = None, context: int = 0) -> Path:
    """Simplex trajectories, one panel per (problem, algorithm); seed = the first seed of each run."""
    traj = read_trajectory(run_dir)
    ctx = context
    runs = [r for r in config["runs"] if r["run_id"] in traj]
    first_seed = {}
    for r in runs:
        first_seed.setdefault((r["problem"], _line(r)), r)
    problems = list(dict.fromkeys(r["problem"] for r in runs))
    lines = list(dict.fromkeys(_line(r) for r in runs))
    fig, axes = plt.subplots(len(problems), len(lines), figsize=(2.9 * len(lines), 2.9 * len(problems) + 0.5),
                             squeeze=False)
    for i, prob in enumerate(problems):
        entry = config["problems"][prob]
        names = ACTION_NAMES.get(entry.get("family"), ("y1", "y2", "y3"))
        winner = (entry.get("theory") or {}).get("minimax_winner")
        for j, line in enumerate(lines):
            ax = axes[i][j]
            ax.plot(*np.vstack([VERTICES, VERTICES[:1]]).T, color="0.5", lw=0.8)
            for v, name in zip(VERTICES, names):
                ax.annotate(name, v, textcoords="offset points", xytext=(0, -10 if v[1] == 0 else 4),
                            ha="center", fontsize=7)
            run = first_seed.get((prob, line))
            if run is not None:
                tr = traj[run["run_id"]]
                if tr["prob"].shape[2] != 3:
                    raise InputError(f"plot.kind simplex needs 3 actions (problem {prob!r} has {tr['prob'].shape[2]})")
                last = _to_plane(tr["prob"][:, ctx])
                ax.plot(*last.T, color="C0", lw=0.9, label="last iterate π_t")
                ax.plot(*last[0], "o", color="k", ms=3, label="start π_0")
                avg = tr["avg_prob"][:, ctx]
                ok = ~np.isnan(avg).any(axis=1)
                if ok.any():
                    a = _to_plane(avg[ok])
                    ax.plot(*a.T, "--", color="C1", lw=1.1, label="average iterate")
                    ax.plot(*a[-1], "s", color="C1", ms=3)
                ax.plot(*last[-1], "o", color="C0", ms=3)
            if winner is not None:
                ax.plot(*_to_plane(np.asarray(winner[ctx])), "*", color="C3", ms=9, label="minimax winner (LP)")
            ax.set_title(f"{prob}: {line}", fontsize=8)
            ax.set_aspect("equal")
            ax.axis("off")
    T = config["runs"][0]["iterations"]
    n = _legend(fig, axes, 4)
    fig.suptitle(f"{config['name']}: {T} iterations, context {ctx}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 * n, 1, 1))
    return save_figure(fig, Path(out) if out else run_dir / "simplex.png", tight=False)


def plot_exploitability(run_dir: Path, config: dict, out: str | Path | None = None) -> Path:
    """expl(pi_t) (solid) and expl(pi_bar_t) (dashed) vs t, log–log, one panel per problem."""
    _, runs, per_run = _load(run_dir, config)
    series = defaultdict(lambda: defaultdict(list))  # problem -> line -> [(t, last, avg)]
    bounds = defaultdict(dict)
    for run_id, rr in per_run.items():
        run = runs[run_id]
        t = np.array([r["iteration"] for r in rr], dtype=float)
        last = np.array([np.nan if r["exploitability"] is None else r["exploitability"] for r in rr])
        avg = np.array([np.nan if r["exploitability_avg"] is None else r["exploitability_avg"] for r in rr])
        if np.all(np.isnan(last)):
            continue
        series[run["problem"]][_line(run)].append((t, last, avg))
        th = run.get("theory") or {}
        if th.get("bound") == "hedge_regret":
            bounds[run["problem"]][th["eta"]] = th["log_inv_pi0"]
    if not series:
        raise InputError(f"no exploitability values in {str(run_dir)!r} (a preference problem is needed)")
    problems = list(series)
    cols = min(3, len(problems))
    rows_n = (len(problems) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.4 * cols, 3.5 * rows_n + 0.9), squeeze=False)
    colours: dict[str, str] = {}
    for k, prob in enumerate(problems):
        ax = axes[k // cols][k % cols]
        for line, members in series[prob].items():
            n = min(len(m[0]) for m in members)
            t = members[0][0][:n]
            keep = t >= 1
            c = colours.setdefault(line, f"C{len(colours) % 10}")
            for idx, style, what in ((1, "-", "last"), (2, "--", "avg")):
                vals = np.stack([m[idx][:n] for m in members])[:, keep]
                if np.all(np.isnan(vals)):
                    continue
                mean, lo, hi = seed_band(np.maximum(vals, FLOOR))
                ax.plot(t[keep], mean, style, color=c, lw=1.3, label=f"{line} [{what}, {len(members)} seeds]")
                ax.fill_between(t[keep], lo, hi, color=c, alpha=0.15, lw=0)
        T = np.arange(1, config["runs"][0]["iterations"] + 1, dtype=float)
        for eta, L in sorted(bounds[prob].items()):
            ax.plot(T, (L / eta + eta * T / 8) / T, ":", color="k", lw=1.2,
                    label=f"Hedge regret bound (L/η + ηT/8)/T, L = ln(1/π₀) = {L:.3g}, η={eta}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-12)
        ax.set_title(prob, fontsize=9)
        ax.set_xlabel("iteration T")
        ax.set_ylabel("exploitability max_y P(y ≻ π) − ½")
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for k in range(len(problems), rows_n * cols):
        axes[k // cols][k % cols].axis("off")
    n = _legend(fig, axes, 3)
    fig.suptitle(f"{config['name']}: last (solid) vs average (dashed) iterate; mean over seeds, 95% bootstrap band",
                 fontsize=10)
    fig.tight_layout(rect=(0, min(0.4, 0.075 * n / rows_n), 1, 1))
    return save_figure(fig, Path(out) if out else run_dir / "exploitability.png", tight=False)


def plot_eps_sweep(run_dir: Path, config: dict, out: str | Path | None = None, context: int = 0) -> Path:
    """Final mass on each action vs the NLHF ε, per algorithm, with the LP minimax winner."""
    ctx = context
    problems = {name: e for name, e in config["problems"].items() if "eps" in e}
    if not problems:
        raise InputError("plot.kind eps_sweep needs problems with an 'eps' field (family nlhf)")
    if not (run_dir / "policies.npz").is_file():
        raise InputError(f"{str(run_dir)!r} has no policies.npz; --kind eps_sweep reads the final policies that a "
                         "preference run saves there (run folder of testbed run)")
    with np.load(run_dir / "policies.npz") as z:
        pol = {k: z[k] for k in z.files}
    mass = defaultdict(lambda: defaultdict(list))  # line -> eps -> [probs per seed]
    which = {}
    for run in config["runs"]:
        if run["problem"] not in problems:
            continue
        it = run.get("report_iterate", "last")
        key = f"{run['run_id']}/{'avg_probs' if it == 'avg' else 'probs'}"
        if key not in pol:
            key, it = f"{run['run_id']}/probs", "last"
        mass[_line(run)][problems[run["problem"]]["eps"]].append(pol[key][ctx])
        which[_line(run)] = it
    eps_all = sorted({e["eps"] for e in problems.values()})
    winner = {e["eps"]: np.asarray(e["theory"]["minimax_winner"][ctx]) for e in problems.values() if e.get("theory")}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), squeeze=False)
    for y in range(3):
        ax = axes[0][y]
        for k, (line, by_eps) in enumerate(mass.items()):
            es = sorted(by_eps)
            m = np.array([np.mean(by_eps[e], axis=0)[y] for e in es])
            ax.plot(es, m, "o-", color=f"C{k}", ms=3, lw=1.3, label=f"{line} ({which[line]} iterate)")
        if winner:
            es = sorted(winner)
            ax.plot(es, [winner[e][y] for e in es], "k--", lw=1.3, label="minimax winner (LP)")
        ax.axvline(0.0, color="0.6", lw=0.6)
        ax.set_xlabel("ε")
        ax.set_ylabel(f"π(y{y + 1})")
        ax.set_title(f"mass on y{y + 1}", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xticks([e for e in eps_all if abs(round(e * 10) - e * 10) < 1e-9])
        ax.grid(alpha=0.3, lw=0.4)
    n = _legend(fig, axes, 3)
    T = config["runs"][0]["iterations"]
    fig.suptitle(f"{config['name']}: NLHF ε-example (Munos et al. 2023), after {T} iterations", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 * n, 1, 1))
    return save_figure(fig, Path(out) if out else run_dir / "eps_sweep.png", tight=False)
