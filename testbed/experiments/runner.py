"""Run a spec: one loop over iterations for every grid point, tidy outputs written atomically.

A run folder holds ``config.yaml`` (the resolved spec), ``metrics.csv`` (DESIGN.md §4 columns,
one row per evaluated iteration per run), ``policies.npz`` (final policy of each run:
``<run_id>/params`` and ``<run_id>/probs``, plus ``<run_id>/avg_probs`` — the average iterate — on
preference problems), ``trajectory.csv`` when the spec sets ``trajectories: true`` (the policy and
average iterate at every evaluated iteration, tidy: run_id, iteration, context, action, prob,
avg_prob) and ``meta.json`` (versions, git commit, seeds, timings, sha256 of each output). The
folder is built under a temporary name and renamed when complete, so it is never half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from testbed.algorithms import ALGORITHMS, Step, build_config, check_pairing
from testbed.errors import InputError
from testbed.experiments.backends import map_tasks
from testbed.experiments.spec import RunPlan, Spec, dump_yaml
from testbed.io import atomic_write, atomic_write_text, replace_dir, save_npz, sha256
from testbed.metrics import (
    COLUMNS,
    EXTRAS,
    bandit_metric_arrays,
    hedge_regret_bound,
    mirror_descent_bound,
    problem_metrics,
)
from testbed.policies import Policy, TabularSoftmax, default_kind, initial_policy, member, stack
from testbed.problems import PreferenceBandit, ProblemBatch, TabularBandit, bradley_terry_fit


class NumericalError(RuntimeError):
    """A run produced NaN/inf; the last good checkpoint is kept."""


@dataclass
class RunState:
    """Everything a run needs to continue: pickled whole at each checkpoint, so a resumed run draws the
    same random numbers and holds the same optimiser state as one that never stopped."""

    t: int
    policy: Policy
    algo: object
    rng: np.random.Generator
    rows: list
    samples: int
    queries: int
    loss: float | None
    step_extras: dict
    prob_sum: np.ndarray | None
    trajectory: list | None
    elapsed: float
    wall: list


def _new_state(plan: RunPlan, problem) -> RunState:
    rng = np.random.default_rng(plan.seed)
    cls = ALGORITHMS[plan.algorithm]
    check_pairing(cls, problem, plan.label)
    cfg = build_config(cls.Config, plan.config, plan.label)
    init_rng = np.random.default_rng(np.random.SeedSequence(plan.seed).spawn(1)[0])  # policy init only
    policy = initial_policy(problem, **(plan.policy or {}), rng=init_rng)
    algo = cls(cfg, problem, rng)
    averaged = isinstance(problem, PreferenceBandit)
    return RunState(0, policy, algo, rng, [], algo.initial_samples, algo.initial_queries, None, {},
                    np.zeros((problem.num_contexts, problem.num_actions)) if averaged else None,
                    [] if plan.trajectory else None, 0.0, [])


def run_one(plan: RunPlan, problem: TabularBandit | PreferenceBandit, checkpoint: Path | None = None,
            every: int = 0) -> tuple[list[dict], Policy, dict]:
    """Run one grid point; return its metric rows, final policy and a dict of extra outputs.

    On a preference problem the loop also keeps the running sum of pi_0 … pi_{t−1} (probabilities),
    so each row reports the average iterate's exploitability (``testbed.metrics``); the extra
    outputs then hold ``avg_probs`` (the final average iterate) and, when ``plan.trajectory``,
    ``trajectory``: rows (iteration, context, action, prob, avg_prob) at every evaluated iteration.
    ``wall``: the wall time of each row (kept out of the rows so metrics.csv is deterministic).

    With ``checkpoint`` the whole state is pickled there every ``every`` iterations (atomically), and a
    run whose checkpoint exists continues from it.
    """
    if checkpoint is not None and checkpoint.is_file():
        with open(checkpoint, "rb") as f:
            st: RunState = pickle.load(f)
    else:
        st = _new_state(plan, problem)
    cfg = st.algo.config
    target = None if isinstance(problem, PreferenceBandit) else type(st.algo).kl_target(cfg, problem)
    counted = type(st.algo).counted(cfg)
    averaged = st.prob_sum is not None
    start = time.perf_counter() - st.elapsed

    def record(t: int) -> None:
        avg = st.prob_sum / t if averaged and t > 0 else None
        if st.trajectory is not None:
            for (x, y), v in np.ndenumerate(st.policy.probs()):
                st.trajectory.append({"run_id": plan.run_id, "iteration": t, "context": x, "action": y,
                                      "prob": float(v), "avg_prob": None if avg is None else float(avg[x, y])})
        st.rows.append(_row(plan, t, st.samples if counted else None, st.queries if counted else None,
                            problem_metrics(problem, st.policy, 0.0, avg, target), st.loss, st.step_extras))
        st.wall.append(time.perf_counter() - start)

    if st.t == 0 and not st.rows:
        record(0)
    while st.t < plan.iterations:
        t = st.t + 1
        if averaged:
            st.prob_sum += st.policy.probs()  # pi_{t-1}, the iterate this update plays
        step = st.algo.update(st.policy, st.rng)
        if not np.all(np.isfinite(step.policy.params)):
            raise NumericalError(f"run {plan.run_id}: non-finite policy parameters at iteration {t}"
                                 + (f"; its last good checkpoint is {checkpoint}" if checkpoint else ""))
        _advance(st, step, t, plan, record, checkpoint, every, start)
    out: dict = {"wall": st.wall}
    if averaged:
        out["avg_probs"] = st.prob_sum / plan.iterations
    if st.trajectory is not None:
        out["trajectory"] = st.trajectory
    return st.rows, st.policy, out


def _advance(st, step: Step, t: int, plan: RunPlan, record, checkpoint: Path | None, every: int, start: float) -> None:
    """After update t (of one run or a stack): keep the step, count samples and queries, record the
    evaluated iterations and checkpoint the whole state every ``every`` iterations (atomically)."""
    st.policy, st.loss, st.step_extras, st.t = step.policy, step.loss, step.extras, t
    st.samples += step.samples or 0
    st.queries += step.queries or 0
    if t % plan.eval_every == 0 or t == plan.iterations:
        record(t)
    if checkpoint is not None and every and (t % every == 0 or t == plan.iterations):
        st.elapsed = time.perf_counter() - start
        atomic_write(checkpoint, lambda tmp: tmp.write_bytes(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)))


def _row(plan: RunPlan, t: int, samples, queries, metrics: dict, loss, extras: dict) -> dict:
    return {"run_id": plan.run_id, "problem": plan.problem, "algorithm": plan.label, "seed": plan.seed,
            "iteration": t, "samples": samples, "queries": queries, **metrics, "loss": loss,
            **{k: extras.get(k) for k in EXTRAS}}


@dataclass
class BatchState:
    """A stack of runs that differ only in seed (and instance): one policy stack, one generator each."""

    t: int
    policy: Policy
    algo: object
    rngs: list
    rows: list
    samples: int
    queries: int
    loss: np.ndarray | None
    step_extras: dict
    elapsed: float
    wall: list


def _new_batch_state(plans: list[RunPlan], problems: list[TabularBandit]) -> BatchState:
    cls = ALGORITHMS[plans[0].algorithm]
    for plan, problem in zip(plans, problems):
        check_pairing(cls, problem, plan.label)
    cfg = build_config(cls.Config, plans[0].config, plans[0].label)
    policies = [initial_policy(problem, **(plan.policy or {}),
                               rng=np.random.default_rng(np.random.SeedSequence(plan.seed).spawn(1)[0]))
                for plan, problem in zip(plans, problems)]
    rngs = [np.random.default_rng(plan.seed) for plan in plans]
    algo = cls(cfg, ProblemBatch(problems), rngs)
    return BatchState(0, stack(policies), algo, rngs, [[] for _ in plans], algo.initial_samples,
                      algo.initial_queries, None, {}, 0.0, [])


def run_batch(plans: list[RunPlan], problems: list[TabularBandit], checkpoint: Path | None = None,
              every: int = 0) -> list[tuple[list[dict], Policy, dict]]:
    """Run S grid points that differ only in seed (and in the instance, of one shape) as one stack.

    The same algorithm code as :func:`run_one`, on a stacked policy and a
    :class:`~testbed.problems.ProblemBatch`: random draws come seed by seed from each run's own
    generator, the update and the exact metrics run on the whole stack in one array computation,
    and each run's rows, final policy and wall times are what :func:`run_one` gives it
    (``tests/test_batched.py`` checks bit-for-bit equality). Checkpoints as in :func:`run_one`.
    """
    if checkpoint is not None and checkpoint.is_file():
        with open(checkpoint, "rb") as f:
            st: BatchState = pickle.load(f)
    else:
        st = _new_batch_state(plans, problems)
    cfg, first = st.algo.config, plans[0]
    target = type(st.algo).kl_target(cfg, st.algo.problem)
    counted = type(st.algo).counted(cfg)
    start = time.perf_counter() - st.elapsed

    def record(t: int) -> None:
        metrics = bandit_metric_arrays(st.algo.problem, st.policy.log_probs(), 0.0, target)
        loss = None if st.loss is None else np.broadcast_to(st.loss, (len(plans),))
        for s, plan in enumerate(plans):
            m = {k: None if v is None else float(v[s]) for k, v in metrics.items()}
            st.rows[s].append(_row(plan, t, st.samples if counted else None, st.queries if counted else None,
                                   m | {"exploitability": None, "exploitability_avg": None},
                                   None if loss is None else float(loss[s]),
                                   {k: float(v[s]) for k, v in st.step_extras.items()}))
        st.wall.append(time.perf_counter() - start)

    if st.t == 0 and not st.rows[0]:
        record(0)
    while st.t < first.iterations:
        t = st.t + 1
        step = st.algo.update(st.policy, st.rngs)
        if not np.isfinite(step.policy.params).all():  # one pass; which member only when one failed
            finite = np.isfinite(step.policy.params).reshape(len(plans), -1).all(axis=1)
            bad = plans[int(np.argmin(finite))].run_id
            raise NumericalError(f"run {bad}: non-finite policy parameters at iteration {t}"
                                 + (f"; its last good checkpoint is {checkpoint}" if checkpoint else ""))
        _advance(st, step, t, first, record, checkpoint, every, start)
    return [(rows, member(st.policy, s), {"wall": st.wall}) for s, rows in enumerate(st.rows)]


def theory(plan: RunPlan, problem: TabularBandit | PreferenceBandit) -> dict | None:
    """Bound data for the plot.

    Reward problems: the mirror-descent bound holds for exact tabular updates, beta = 0.
    Preference problems: the Hedge regret bound on expl(pi_bar_T) holds for exact Hedge and for
    exact REBEL-preference with y' ~ pi_t (the same update, THEORY.md E); Nash-MD with the
    decreasing schedule has KL(pi*_tau || pi_T) ≤ 8/(tau²(T+1)).
    """
    pi0 = initial_policy(problem, **(plan.policy or {}))
    cfg = plan.config
    if isinstance(problem, PreferenceBandit):
        hedge_like = plan.algorithm == "hedge" or (plan.algorithm == "rebel_pref" and cfg.get("mode") == "exact"
                                                   and cfg.get("y_prime") == "policy")
        if hedge_like:
            L = float(hedge_regret_bound(problem, pi0, 1.0, 1.0)) - 1 / 8
            return {"bound": "hedge_regret", "eta": cfg["eta"], "log_inv_pi0": L}
        if plan.algorithm == "nash_md" and cfg.get("schedule") == "decreasing":
            return {"bound": "nash_md_kl", "tau": cfg["tau"]}
        return None
    if not isinstance(pi0, TabularSoftmax) or cfg.get("beta", 0) or cfg.get("mode") != "exact":
        return None
    eta = cfg["eta"]
    b1 = float(mirror_descent_bound(problem, pi0, eta, 1.0))
    gap0 = problem.optimal_value() - problem.value(pi0.probs())
    return {"bound": "mirror_descent", "eta": eta, "kl_star_init_over_eta": b1 - gap0, "gap0": gap0}


FRONTIER_BETAS = np.logspace(-3, 1, 41)


def kl_frontier(problem: TabularBandit, betas: np.ndarray = FRONTIER_BETAS) -> dict:
    """The exact reward-vs-KL frontier: (KL(pi*_beta || pi_ref), J(pi*_beta)) for a grid of beta. No
    policy has more reward at the same KL (pi*_beta maximises J - beta·KL)."""
    kl, reward = [], []
    for b in betas:
        lp = problem.regularised_optimum_log(b)
        kl.append(problem.kl_ref(np.exp(lp), lp))
        reward.append(problem.value(np.exp(lp)))
    return {"beta": [float(b) for b in betas], "kl": kl, "reward": reward}


def problem_theory(problem) -> dict | None:
    """Exact facts about a preference problem, for plots: minimax winner, BT rewards, Condorcet winners."""
    if not isinstance(problem, PreferenceBandit):
        return None
    return {"minimax_winner": problem.minimax_winner().tolist(),
            "bt_rewards": bradley_terry_fit(problem.preferences,
                                            pair_weights=problem.pi_ref[:, :, None] * problem.pi_ref[:, None, :]).tolist(),
            "condorcet_winner": problem.condorcet_winners()}


TRAJECTORY_COLUMNS = ("run_id", "iteration", "context", "action", "prob", "avg_prob")


def format_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def metrics_csv(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([format_value(r[c]) for c in columns])
    return buf.getvalue()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import gymnasium
    import scipy
    import torch

    import testbed
    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "torch": torch.__version__, "gymnasium": gymnasium.__version__, "testbed": testbed.__version__}


RUN_FILES = {"config.yaml", "metrics.csv", "policies.npz", "meta.json", "timings.json", "trajectory.csv"}
METRICS_FILE_COLUMNS = tuple(c for c in COLUMNS if c != "wall_time")
"""metrics.csv holds every schema column but ``wall_time``, which lives in timings.json (and is merged
back by :func:`read_metrics`), so that metrics.csv is bit-identical across runs, --jobs and resumes."""


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing --out unless --overwrite, and even then unless it is a run folder."""
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"--out {str(out)!r}: {str(parent)!r} is a file, not a folder")
    if not out.exists():
        return
    if not overwrite:
        raise InputError(f"--out {str(out)!r} already exists; pass --overwrite to replace it")
    if not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder")
    names = {p.name for p in out.iterdir()}
    if "meta.json" not in names or not names <= RUN_FILES | {n for n in names if n.endswith((".png", ".md"))}:
        raise InputError(f"--out {str(out)!r} is not a run folder (it holds other files); --overwrite only replaces run folders")


def partial_dir(out: Path) -> Path:
    """Where an unfinished run keeps its checkpoints: <out>.partial next to <out>."""
    return out.parent / f"{out.name}.partial"


def batch_groups(spec: Spec, jobs: int = 1, batch: bool = True) -> list[list[int]]:
    """Which grid points run together as one stack (indices into ``spec.runs``, in order).

    Points that differ only in seed, or in an instance of the same kind and shape, form a group when
    their algorithm can update a stack (``Algorithm.batchable``); with ``jobs`` > 1 a group is split
    into ``jobs`` near-equal stacks so that every process gets work. ``batch=False``: one point each.
    """
    groups: dict = {}
    for i, plan in enumerate(spec.runs):
        problem = spec.problems[plan.problem]
        cls = ALGORITHMS[plan.algorithm]
        kind = (plan.policy or {}).get("kind") or default_kind(problem)
        ok = (batch and not plan.trajectory and not isinstance(problem, PreferenceBandit)
              and cls.batchable(build_config(cls.Config, plan.config, plan.label), kind))
        key = (("batch", plan.algorithm, plan.label, dump_yaml(plan.config), dump_yaml(plan.policy), plan.iterations,
                plan.eval_every, type(problem).__name__, problem.rewards.shape,
                getattr(problem, "features", np.empty(0)).shape) if ok else ("single", i))
        groups.setdefault(key, []).append(i)
    out = []
    for members in groups.values():
        parts = min(max(jobs, 1), len(members))
        out += [list(a) for a in np.array_split(members, parts)]
    return out


def _worker(plans: list[RunPlan], problems: list, partial: str | None = None, key: str = "0",
            every: int = 0) -> list[tuple[list[dict], np.ndarray, np.ndarray, dict, float]]:
    """Run (or finish, or load) a group of grid points (one, or a stack). With ``partial``, a finished
    group is stored as <key>.done and an unfinished one checkpointed as <key>.ckpt every ``every`` iterations."""
    torch.set_num_threads(1)
    if partial and not Path(partial).is_dir():  # a Ray node that does not share the driver's disk: no checkpoints
        partial = None
    done = Path(partial) / f"{key}.done" if partial else None
    if done is not None and done.is_file():
        with open(done, "rb") as f:
            return pickle.load(f)
    ckpt = Path(partial) / f"{key}.ckpt" if partial else None
    t0 = time.perf_counter()
    runs = run_batch(plans, problems, ckpt, every) if len(plans) > 1 else [run_one(plans[0], problems[0], ckpt, every)]
    result = [(rows, policy.params, policy.probs(), extra,
               extra["wall"][-1] if extra["wall"] else time.perf_counter() - t0) for rows, policy, extra in runs]
    if done is not None:
        atomic_write(done, lambda tmp: tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)))
        ckpt.unlink(missing_ok=True)
    return result


def run_all(spec: Spec, jobs: int = 1, progress: bool = True, partial: Path | None = None, every: int = 0,
            batch: bool = True, backend: str = "local", ray_address: str | None = None) -> list[tuple]:
    """Run every grid point, in groups (:func:`batch_groups`), on ``backend``
    (:mod:`testbed.experiments.backends`: serial, ``jobs`` processes, or Ray). Each run draws only from
    its own seed, torch uses one thread and a stacked run gives each member what it gives alone, so the
    results depend neither on ``jobs`` nor on ``batch`` nor on ``backend``."""
    groups = batch_groups(spec, jobs, batch)
    total = sum(p.iterations for p in spec.runs)
    args = [([spec.runs[i] for i in g], [spec.problems[spec.runs[i].problem] for i in g],
             str(partial) if partial else None, f"{g[0]}-{len(g)}", every) for g in groups]
    sizes = [sum(spec.runs[i].iterations for i in g) for g in groups]
    with tqdm(total=total, desc=spec.name, unit="it", disable=not progress, file=sys.stderr,
              mininterval=0.5, leave=False) as bar:
        results = map_tasks(_worker, args, backend, jobs, lambda k: bar.update(sizes[k]), ray_address)
    out: list = [None] * len(spec.runs)
    for g, res in zip(groups, results):
        for i, r in zip(g, res):
            out[i] = r
    return out


def run_spec(spec: Spec, out: str | Path, overwrite: bool = False, progress: bool = True, jobs: int = 1,
             resume: bool = False, checkpoint_every: int = 50, batch: bool = True, backend: str = "local",
             ray_address: str | None = None) -> Path:
    """Run every grid point of ``spec`` and write the run folder ``out`` atomically.

    While it runs, <out>.partial holds each finished run and a checkpoint of each unfinished one
    (every ``checkpoint_every`` iterations); after an interruption (even SIGKILL) ``resume=True``
    continues from there and gives the same files as an uninterrupted run (all but timings.json).
    """
    out = Path(out)
    prepare_out(out, overwrite)
    partial = partial_dir(out)
    resolved = spec.resolved()
    for rec, plan in zip(resolved["runs"], spec.runs):
        rec["theory"] = theory(plan, spec.problems[plan.problem])
        rec["report_iterate"] = ALGORITHMS[plan.algorithm].report_iterate
    for name, entry in resolved["problems"].items():
        problem = spec.problems[name]
        if isinstance(problem, PreferenceBandit):
            entry["theory"] = problem_theory(problem)
        else:
            entry["frontier"] = kl_frontier(problem)
    config_text = dump_yaml(resolved)
    if resume:
        if not (partial / "config.yaml").is_file():
            raise InputError(f"--resume: nothing to resume at {str(partial)!r}")
        if (partial / "config.yaml").read_text() != config_text:
            raise InputError(f"--resume: the spec changed since the interrupted run in {str(partial)!r}; "
                             "rerun with --overwrite to start over")
    elif partial.exists():
        if not overwrite:
            raise InputError(f"an interrupted run of --out {str(out)!r} is in {str(partial)!r}; pass --resume to "
                             "continue it or --overwrite to start over")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_text(partial / "config.yaml", config_text)
    started = datetime.now(UTC).isoformat()

    rows, policies, timings, walls, trajectory = [], {}, {}, {}, []
    for plan, (run_rows, params, probs, extra, seconds) in zip(
            spec.runs, run_all(spec, jobs, progress, partial, checkpoint_every, batch, backend, ray_address)):
        timings[plan.run_id] = seconds
        walls[plan.run_id] = extra["wall"]
        rows += run_rows
        policies[f"{plan.run_id}/params"] = params
        policies[f"{plan.run_id}/probs"] = probs
        if "avg_probs" in extra:
            policies[f"{plan.run_id}/avg_probs"] = extra["avg_probs"]
        trajectory += extra.get("trajectory", [])

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        atomic_write_text(tmp / "config.yaml", config_text)
        atomic_write_text(tmp / "metrics.csv", metrics_csv(rows, METRICS_FILE_COLUMNS))
        save_npz(tmp / "policies.npz", policies)
        files = ["config.yaml", "metrics.csv", "policies.npz"]
        if trajectory:
            atomic_write_text(tmp / "trajectory.csv", metrics_csv(trajectory, TRAJECTORY_COLUMNS))
            files.append("trajectory.csv")
        meta = {"spec": spec.name, "source": spec.source, "git_commit": git_commit(), "versions": versions(),
                "seeds": sorted({p.seed for p in spec.runs}), "runs": len(spec.runs),
                "sha256": {n: sha256(tmp / n) for n in files},
                "note": "timings.json (wall times) is the one output that differs between identical runs"}
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
        atomic_write_text(tmp / "timings.json", json.dumps(
            {"started": started, "finished": datetime.now(UTC).isoformat(), "seconds": timings,
             "wall_time": walls}, indent=1) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.csv as a list of dicts with numbers parsed (empty cells become None)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise InputError(f"{str(run_dir)!r} is not a run folder (no metrics.csv)")
    ints = {"seed", "iteration", "samples", "queries"}
    text = {"run_id", "problem", "algorithm"}
    with open(path, newline="") as f:
        rows = [{k: (v if k in text else None if v == "" else int(v) if k in ints else float(v))
                 for k, v in r.items()} for r in csv.DictReader(f)]
    timings = Path(run_dir) / "timings.json"
    walls = json.loads(timings.read_text()).get("wall_time", {}) if timings.is_file() else {}
    seen: dict[str, int] = {}
    for r in rows:  # wall_time back in, in schema order (rows of a run are in iteration order)
        i = seen[r["run_id"]] = seen.get(r["run_id"], -1) + 1
        w = walls.get(r["run_id"], [])
        r["wall_time"] = w[i] if i < len(w) else None
    return [{c: r.get(c) for c in COLUMNS} for r in rows]
