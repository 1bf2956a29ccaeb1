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

from testbed.errors import InputError, choice  # noqa: E402
from testbed.io import atomic_write  # noqa: E402
from testbed.plotting.common import (  # noqa: E402
    FLOOR,
    LOG_Y,
    _final,
    _legend_below,
    _load,
    read_config,
    require_values,
    save_figure,
    seed_band,
)


def _line_name(run: dict, panel_by: str | None) -> str:
    """The run's label without the panel's parameter: one line per configuration within a panel."""
    rest = [f"{k}={v}" for k, v in run["swept"].items() if k != panel_by]
    return run["base_label"] + (f" ({', '.join(rest)})" if rest else "")



def plot_run(run_dir: str | Path, out: str | Path | None = None, panel_by: str | None = None,
             x: str | None = None, y: str | None = None) -> Path:
    """A metric (``y``) against iteration or samples (``x``), mean over seeds with a 95% bootstrap band,
    panels by a hyper-parameter (``panel_by``), theory bounds overlaid where they apply. Defaults
    come from the spec's first ``kind: curve`` plot entry."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if "runs" not in config and "model" in config:  # an LM run folder
        from testbed.plotting.llm import plot_lm_curves
        return plot_lm_curves(run_dir, out or run_dir / f"{(y or 'reward').replace('/', '_')}.png", x, y)
    opts = next((p for p in config.get("plot") or [] if p.get("kind", "curve") == "curve"), {})
    panel_by = panel_by or opts.get("panel_by")
    x = choice("--x", x or opts.get("x", "iteration"), ("iteration", "samples", "queries"))
    y = choice("--y", y or opts.get("y", "suboptimality"), ("suboptimality", "reward", "kl_ref", "kl_reg_gap", "loss",
                                                            "exploitability", "exploitability_avg"))
    _, runs, per_run = _load(run_dir, config)
    known = sorted({k for r in runs.values() for k in (*r["swept"], *r["config"])})
    if panel_by and panel_by not in known:
        raise InputError(f"panel_by (--panel-by) {panel_by!r} is not a hyper-parameter of these runs; expected one of "
                         f"{', '.join(known)}")

    def panel_value(run):
        if not panel_by:
            return None
        if panel_by in run["swept"]:
            return run["swept"][panel_by]
        return run["config"].get(panel_by)

    series = defaultdict(lambda: defaultdict(list))  # (problem, panel) -> line -> [(seed, xs, ys)]
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
    plotted = np.concatenate([m[1] for lines in series.values() for members in lines.values() for m in members])
    # a log axis cannot show a negative value; an exact 0 (an exact run at J*) is drawn at FLOOR, as 1e-17 is
    log = y in LOG_Y and bool(np.all(plotted[~np.isnan(plotted)] >= 0))

    problems = sorted({k[0] for k in series})
    panels = sorted({k[1] for k in series}, key=lambda v: (v is None, v))
    wide = len(panels) == 1  # no panel parameter: problems side by side
    shape = (1, len(problems)) if wide else (len(problems), len(panels))
    fig, axes = plt.subplots(*shape, figsize=(4.6 * shape[1], 3.6 * shape[0]), squeeze=False,
                             sharey=False if wide else "row")
    colours = {}
    for i, prob in enumerate(problems):
        for j, pv in enumerate(panels):
            ax = axes[0][i] if wide else axes[i][j]
            for line, members in sorted(series.get((prob, pv), {}).items()):
                n = min(len(m[1]) for m in members)
                xs = members[0][0][:n]
                vals = np.stack([m[1][:n] for m in members])
                if log:
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
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{prob}" + (f"\n{panel_by} = {pv}" if panel_by else ""), fontsize=9)
            ax.set_xlabel(x)
            if j == 0 and (i == 0 or not wide):
                ax.set_ylabel(y + (" (J* − J(π_t))" if y == "suboptimality" else ""))
            ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.suptitle(f"{config['name']}: mean over seeds, 95% bootstrap band", fontsize=10)
    _legend_below(fig, axes, shape[1])
    return save_figure(fig, Path(out) if out else run_dir / f"{y}.png")


def plot_frontier(run_dir: str | Path, out: str | Path) -> Path:
    """Reward vs KL(pi || pi_ref): configurations that sweep ``beta`` give one point per beta (final
    iterate, mean over seeds, connected in order of beta); the others (e.g. REBEL at several eta)
    give their path over the evaluated iterations. Error bars: 95% bootstrap over seeds."""
    run_dir = Path(run_dir)
    config, runs, per_run = _load(run_dir)
    require_values(per_run, ("reward", "kl_ref"), run_dir, "frontier")
    groups = defaultdict(lambda: defaultdict(list))  # (problem, line) -> beta -> run ids
    for run_id, run in runs.items():
        rest = [f"{k}={v}" for k, v in run["swept"].items() if k != "beta"]
        line = run["base_label"] + (f" ({', '.join(rest)})" if rest else "")
        groups[(run["problem"], line)][run["swept"].get("beta")].append(run_id)
    problems = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, len(problems), figsize=(5.2 * len(problems), 4.2), squeeze=False)
    for j, prob in enumerate(problems):
        ax = axes[0][j]
        for c, ((p, line), by_beta) in enumerate(sorted(groups.items())):
            if p != prob:
                continue
            colour = f"C{c % 10}"
            if len(by_beta) > 1:  # one point per beta
                betas = sorted(by_beta)
                kl = [seed_band(_final(per_run, by_beta[b], "kl_ref")[:, None])[0][0] for b in betas]
                rw = [seed_band(_final(per_run, by_beta[b], "reward")[:, None]) for b in betas]
                ax.errorbar(kl, [m[0] for m, _, _ in rw], yerr=np.array([[m[0] - lo[0], hi[0] - m[0]] for m, lo, hi in rw]).T,
                            fmt="o-", color=colour, ms=4, capsize=2, label=f"{line}: beta sweep")
                for k, r, b in zip(kl, rw, betas):
                    ax.annotate(f"β={b}", (k, r[0][0]), fontsize=6, color=colour, xytext=(4, -9),
                                textcoords="offset points")
            else:  # a path over iterations
                ids = next(iter(by_beta.values()))
                n = min(len(per_run[i]) for i in ids)
                kl = np.mean([[r["kl_ref"] for r in per_run[i][:n]] for i in ids], axis=0)
                rw = np.mean([[r["reward"] for r in per_run[i][:n]] for i in ids], axis=0)
                ax.plot(kl, rw, ".-", color=colour, ms=3, lw=1, label=f"{line}: iterations")
        front = config["problems"].get(prob, {}).get("frontier")
        if front:
            ax.plot(front["kl"], front["reward"], ":", color="k", lw=1.2, label="exact frontier π*_β (all β)")
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.set_xlabel("KL(π ‖ π_ref)")
        ax.set_ylabel("reward J(π)")
        ax.set_title(prob, fontsize=9)
        ax.grid(alpha=0.3, lw=0.4)
    fig.suptitle(f"{config['name']}: reward vs KL frontier (mean over seeds)", fontsize=10)
    _legend_below(fig, axes, 2)
    return save_figure(fig, Path(out))


SENSITIVITY_PARAMS = ("eta", "lr")


def plot_sensitivity(run_dir: str | Path, out: str | Path) -> Path:
    """Final sub-optimality vs the swept step size (eta) or learning rate (lr), one panel per algorithm
    configuration, mean over seeds with 95% bootstrap intervals."""
    run_dir = Path(run_dir)
    config, runs, per_run = _load(run_dir)
    groups = defaultdict(lambda: defaultdict(list))  # (problem, base, param) -> value -> ids
    for run_id, run in runs.items():
        param = next((k for k in SENSITIVITY_PARAMS if k in run["swept"]), None)
        if param is None:
            continue
        groups[(run["problem"], run["base_label"], param)][run["swept"][param]].append(run_id)
    if not groups:
        raise InputError(f"no run in {str(run_dir)!r} sweeps one of {SENSITIVITY_PARAMS}")
    keys = sorted(groups)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False, sharey=True)
    for j, key in enumerate(keys):
        ax = axes[0][j]
        vals = sorted(groups[key])
        stats = [seed_band(np.maximum(_final(per_run, groups[key][v], "suboptimality"), FLOOR)[:, None]) for v in vals]
        mean = np.array([m[0] for m, _, _ in stats])
        ax.errorbar(vals, mean, yerr=np.array([[m[0] - lo[0], hi[0] - m[0]] for m, lo, hi in stats]).T, fmt="o-",
                    capsize=3, color=f"C{j % 10}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(key[2])
        ax.set_title(f"{key[1]}\n{key[0]}", fontsize=8)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    axes[0][0].set_ylabel("final J* − J(π_T)")
    fig.suptitle(f"{config['name']}: sensitivity (mean over seeds, 95% bootstrap interval)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out))


def results_table(run_dir: str | Path, out: str | Path) -> Path:
    """A markdown table per problem ranking the configurations by final sub-optimality (mean over seeds,
    95% percentile-bootstrap interval), with the responses and oracle queries each used."""
    run_dir = Path(run_dir)
    config, runs, per_run = _load(run_dir)
    require_values(per_run, ("suboptimality",), run_dir, "table")
    groups = defaultdict(list)
    for run_id, run in runs.items():
        groups[(run["problem"], run["label"])].append(run_id)
    lines = [f"# {config['name']}: final sub-optimality J* − J(π_T)", "",
             "Mean over seeds with a 95% percentile-bootstrap interval; ranked per problem. "
             "`responses` = responses drawn, `queries` = reward or preference oracle calls (empty: exact).", ""]
    for prob in sorted({k[0] for k in groups}):
        rows = []
        for (p, label), ids in groups.items():
            if p != prob:
                continue
            sub = _final(per_run, ids, "suboptimality")
            m, lo, hi = seed_band(sub[:, None])
            last = per_run[ids[0]][-1]
            rows.append((m[0], lo[0], hi[0], label, len(ids), last["iteration"], last["samples"], last["queries"],
                         float(np.mean(_final(per_run, ids, "kl_ref")))))
        rows.sort()
        lines += [f"## {prob}", "", "| rank | algorithm | seeds | iterations | responses | queries | final sub-optimality "
                  "[95% CI] | KL(π‖π_ref) |", "|---:|---|---:|---:|---:|---:|---|---:|"]
        for rank, (m, lo, hi, label, n, it, samples, queries, kl) in enumerate(rows, 1):
            lines.append(f"| {rank} | {label} | {n} | {it} | {'' if samples is None else samples} | "
                         f"{'' if queries is None else queries} | {m:.3g} [{lo:.3g}, {hi:.3g}] | {kl:.3g} |")
        lines.append("")
    out = Path(out)
    atomic_write(out, lambda p: p.write_text("\n".join(lines)))
    return out
