"""Figures and the table of an LM study run folder (``testbed reproduce --llm``): reward vs KL, oracle
win rate per algorithm, and peak memory / seconds per iteration. Reads config.yaml, metrics.csv and
meta.json, never live objects."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from testbed.errors import InputError  # noqa: E402
from testbed.io import atomic_write  # noqa: E402
from testbed.plotting.common import save_figure  # noqa: E402
from testbed.results import LM_COLUMNS, read_metrics  # noqa: E402


def read_lm_metrics(run_dir: str | Path) -> dict[str, list[dict]]:
    """An LM run folder's rows (numbers parsed, empty cells None, measured columns from timings.json), by run id."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for r in read_metrics(run_dir, LM_COLUMNS):
        runs[r["run_id"]].append(r)
    return dict(runs)


def _label(run_id: str) -> str:
    return run_id.split("-")[0].upper()


def seconds_per_iteration(rows: list[dict]) -> float | None:
    """Training seconds per iteration: wall time from the end of iteration 1 to the end of the last, per
    iteration (each row's wall time is taken before any evaluation), or iteration 1's own when alone."""
    it = [r for r in rows if r["iteration"] and r["wall_time"] is not None]
    if len(it) >= 2:
        return (it[-1]["wall_time"] - it[0]["wall_time"]) / (len(it) - 1)
    if it and rows[0]["wall_time"] is not None:
        return it[0]["wall_time"] - rows[0]["wall_time"]
    return None


def plot_llm_reward_kl(run_dir: str | Path, out: str | Path) -> Path:
    """Reward-model score vs KL(pi || pi_ref): each algorithm's path over training (the batch statistics
    objective/scores and objective/kl, where it samples) and its held-out point at the end."""
    runs = read_lm_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for c, (run_id, rows) in enumerate(sorted(runs.items())):
        col = f"C{c % 10}"
        path = [(r["objective/kl"], r["objective/scores"]) for r in rows if r["objective/kl"] is not None]
        if path:
            ax.plot(*zip(*path), ".-", color=col, lw=0.8, ms=3, alpha=0.5,
                    label=f"{_label(run_id)}: training batches (score − missing-EOS penalty)")
        last = rows[-1]
        if last.get("eval/kl") is not None:
            ax.plot(last["eval/kl"], last["eval/rm_score"], "o", color=col, ms=8, mec="k",
                    label=f"{_label(run_id)}: held-out, final (RM score)")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("KL(π ‖ π_ref) (sequence log-ratio of the policy's samples)")
    ax.set_ylabel("reward-model score")
    ax.grid(alpha=0.3, lw=0.4)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{_name(run_dir)}: reward vs KL", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out))


def _by_method(runs: dict) -> dict[str, dict[int, dict]]:
    """method label → seed → final row, for the runs with a held-out win rate."""
    out: dict = defaultdict(dict)
    for run_id, rows in sorted(runs.items()):
        if rows[-1].get("eval/win_rate") is not None:
            out[_label(run_id)][int(run_id.rsplit("-s", 1)[1])] = rows[-1]
    return dict(out)


def over_seeds(values) -> tuple[float, float | None, float | None]:
    """Mean over seeds and its 95% Student-t interval (None, None for a single seed)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None, None
    h = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()), float(v.mean()) - h, float(v.mean()) + h


def plot_llm_winrate(run_dir: str | Path, out: str | Path) -> Path:
    """The held-out oracle's win rate of each algorithm's final policy against the reference policy: one
    dot per seed (its 95% Wilson interval as a thin bar), the bar at the mean over seeds with a 95%
    Student-t interval over seeds when there are two or more; 50% = no better than the reference."""
    methods = _by_method(read_lm_metrics(run_dir))
    if not methods:
        raise InputError(f"{str(run_dir)!r} has no eval/win_rate (not a bradley_terry study run)")
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for i, (_, by_seed) in enumerate(sorted(methods.items())):
        col = f"C{i % 10}"
        rows = [by_seed[s] for s in sorted(by_seed)]
        mean, lo, hi = over_seeds([r["eval/win_rate"] for r in rows])
        ax.bar(i, mean, color=col, alpha=0.45, width=0.7)
        if lo is not None:
            ax.errorbar(i, mean, yerr=[[mean - lo], [hi - mean]], fmt="none", color="k", capsize=6, lw=1.6)
        offsets = np.linspace(-0.2, 0.2, len(rows)) if len(rows) > 1 else [0.0]
        for dx, r in zip(offsets, rows):
            ax.errorbar(i + dx, r["eval/win_rate"], yerr=[[r["eval/win_rate"] - r["eval/win_rate_lo"]],
                                                          [r["eval/win_rate_hi"] - r["eval/win_rate"]]],
                        fmt="o", color=col, mec="k", ms=5, lw=0.6, capsize=2)
    ax.axhline(0.5, color="k", ls=":", lw=1)
    names = sorted(methods)
    ax.set_xticks(range(len(names)), [f"{m}\n({len(methods[m])} seed{'s' if len(methods[m]) > 1 else ''})" for m in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs reference (oracle)")
    ax.set_title(f"{_name(run_dir)}: held-out win rate; dots: seeds (95% Wilson),\nbar: mean over seeds "
                 "(95% t-interval over seeds)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(out))


def _seed_summary(runs: dict) -> list[str]:
    """The table over seeds: win rate and RM score as mean [95% t-interval over seeds]; a single seed is labelled."""
    def cell(values, fmt):
        m, lo, hi = over_seeds(values)
        return format(m, fmt) + ("" if lo is None else f" [{format(lo, fmt)}, {format(hi, fmt)}]")

    lines = ["| algorithm | seeds | win rate, mean [95% CI over seeds] | RM score, mean [95% CI over seeds] | "
             "KL(π‖π_ref), mean |", "|---|---|---|---|---:|"]
    for m, by_seed in sorted(_by_method(runs).items()):
        rows = [by_seed[s] for s in sorted(by_seed)]
        seeds = f"{len(rows)}" if len(rows) > 1 else "1 (single seed: no interval)"
        kl = [r["eval/kl"] for r in rows if r.get("eval/kl") is not None]
        lines.append(f"| {m} | {seeds} | {cell([r['eval/win_rate'] for r in rows], '.1%')} | "
                     f"{cell([r['eval/rm_score'] for r in rows], '.3g')} | {_fmt(float(np.mean(kl)) if kl else None)} |")
    return lines


def llm_table(run_dir: str | Path, out: str | Path, wall_seconds: float | None = None) -> Path:
    """Markdown: per algorithm, win rate [95% CI], held-out RM score and KL, peak memory (and its ratio to
    PPO's) and seconds per iteration; the pipeline's reward-model numbers and the wall time."""
    run_dir = Path(run_dir)
    runs = read_lm_metrics(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").is_file() else {}
    timings = json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").is_file() else {}
    peak = {i: max((r["peak_memory_mb"] or 0) for r in rows) for i, rows in runs.items()}
    ppo = next((v for i, v in peak.items() if i.startswith("ppo-")), None)
    config = _config(run_dir)
    lines = [f"# {config.get('name', run_dir.name)}: held-out evaluation, memory and time", "",
             "Win rate: the held-out oracle (MiniLM similarity to the post, minus a length penalty) judging one sample per "
             "held-out prompt from the final policy against one from the reference policy (ties ½), 95% Wilson interval. "
             "KL: mean ln π(y|x) − ln π_ref(y|x) over the policy's held-out samples. Peak memory: peak resident set of the "
             "run above the process's memory when the run started (all models, optimiser state, activations). "
             "s/iteration: training iterations only (no set-up or evaluation).", "",
             "Sequences/backward: responses (prompt + response) in each forward-backward pass, which set the activation "
             "memory (a REBEL or DPO item is a pair, two sequences; ``grad_accum`` splits a minibatch into micro-batches).",
             "", "Over seeds:", "", *_seed_summary(runs), "", "Per run (seed):", "",
             "| algorithm | win rate [95% CI] | RM score | KL(π‖π_ref) | words | peak memory MB | × PPO | "
             "sequences/backward | s/iteration | run s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run_id, rows in sorted(runs.items()):
        last = rows[-1]
        wr = last.get("eval/win_rate")
        win = "" if wr is None else f"{wr:.1%} [{last['eval/win_rate_lo']:.1%}, {last['eval/win_rate_hi']:.1%}]"
        spi = seconds_per_iteration(rows)
        secs = {**meta.get("seconds", {}), **timings.get("seconds", {})}.get(run_id)
        name = f"{_label(run_id)} s{run_id.rsplit('-s', 1)[1]}"
        lines.append(f"| {name} | {win} | {_fmt(last.get('eval/rm_score'))} | {_fmt(last.get('eval/kl'))} | "
                     f"{_fmt(last.get('eval/words'), '.1f')} | {peak[run_id]:.0f} | "
                     f"{'' if not ppo else format(peak[run_id] / ppo, '.2f')} | "
                     f"{_fmt(_sequences_per_backward(config, run_id))} | "
                     f"{_fmt(spi, '.1f')} | {_fmt(secs, '.0f')} |")
    st = meta.get("study")
    if st:
        lines += ["", f"Reward model: Bradley–Terry head on frozen MiniLM features, fitted on {st['pairs_fit']} "
                  f"oracle-labelled pairs of reference summaries; agrees with the oracle's labels on "
                  f"{st['rm_heldout_agreement']:.1%} of {st['heldout_pairs']} held-out pairs. Pipeline set-up "
                  f"{st.get('seconds', timings.get('study_seconds')) or 0:.0f} s."]
    if wall_seconds is not None:
        lines += ["", f"Wall time of the whole study (one process, {meta.get('device', 'cpu')}): {wall_seconds / 60:.1f} min."]
    lines.append("")
    out = Path(out)
    atomic_write(out, lambda p: p.write_text("\n".join(lines)))
    return out


def _config(run_dir) -> dict:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        return {}
    import yaml
    return yaml.safe_load(p.read_text()) or {}


def _sequences_per_backward(config: dict, run_id: str) -> int | None:
    """Sequences in one forward-backward pass of run ``<name>-<index>-s<seed>``: the minibatch's items (pairs
    for REBEL, online and offline DPO; responses for PPO, RLOO) times sequences per item, over micro-batches."""
    try:
        algo = config["algorithms"][int(run_id.split("-")[1])]
        train = config["train"]
        per_item = algo["sequences_per_item"]  # the algorithm's declaration, written into config.yaml by the run
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    micro = algo.get("grad_accum") or train.get("grad_accum", 1)
    return (algo.get("minibatch") or train["minibatch"]) * per_item // (micro * config.get("processes", 1))


def _fmt(v, f: str = ".3g") -> str:
    return "" if v is None else format(v, f)


def _name(run_dir) -> str:
    return _config(run_dir).get("name", Path(run_dir).name)


LM_Y = ("reward", "kl_ref", "loss", "objective/scores", "objective/kl", "objective/entropy", "objective/non_score_reward",
        "objective/rlhf_reward", "val/num_eos_tokens", "loss/policy", "loss/value", "eval/scores", "rewards/margins",
        "rewards/accuracies", "lr")


def plot_lm_curves(run_dir: str | Path, out: str | Path, x: str | None = None, y: str | None = None) -> Path:
    """A metric of an LM run folder (``y``, default ``reward``: the mean score of the training batch) against
    ``iteration`` or ``samples``: one line per algorithm configuration, the mean over its seeds, each seed faint."""
    from testbed.errors import choice

    x = choice("--x", x or "iteration", ("iteration", "samples", "queries"))
    y = choice("--y", y or "reward", LM_Y)
    groups: dict[str, dict[str, list]] = defaultdict(dict)
    for run_id, rows in read_lm_metrics(run_dir).items():
        pts = [(r[x], r[y]) for r in rows if r[x] is not None and r[y] is not None]
        if pts:
            key = run_id.rsplit("-s", 1)[0]  # <method>-<index>: one configuration; labelled by the rows' algorithm
            groups[f"{rows[0].get('algorithm') or key.split('-')[0]}-{key.rsplit('-', 1)[1]}"][run_id] = pts
    if not groups:
        raise InputError(f"{str(run_dir)!r}: no run has values of {y!r} against {x!r}")
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for c, (config, seeds) in enumerate(sorted(groups.items())):
        col = f"C{c % 10}"
        for pts in seeds.values():
            if len(seeds) > 1:
                ax.plot(*zip(*pts), "-", color=col, lw=0.6, alpha=0.3)
        xs = sorted(set.intersection(*(set(p for p, _ in pts) for pts in seeds.values())))
        mean = [np.mean([dict(pts)[v] for pts in seeds.values()]) for v in xs]
        ax.plot(xs, mean, ".-", color=col, lw=1.4, ms=3, label=f"{config} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3, lw=0.4)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{_name(run_dir)}: {y}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, Path(out))


def is_lm_folder(run_dir: str | Path) -> bool:
    """An LM run folder's config.yaml has a model and algorithms × seeds, no grid of runs."""
    config = _config(run_dir)
    return "runs" not in config and "model" in config
