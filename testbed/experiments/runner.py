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

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from testbed import results
from testbed.algorithms import ALGORITHMS, Step, build_config, check_pairing
from testbed.errors import InputError
from testbed.experiments.backends import map_tasks
from testbed.experiments.spec import RunPlan, Spec, dump_yaml
from testbed.experiments.theory import kl_frontier, problem_theory, theory
from testbed.io import atomic_write_text, save_npz
from testbed.metrics import problem_metrics, stack_metric_arrays
from testbed.policies import Policy, default_kind, initial_policy, initial_stack, member
from testbed.problems import PreferenceBandit, TabularBandit, problem_batch
from testbed.results import COLUMNS, EXTRAS
from testbed.training import NumericalError, check_finite, loggers, train
from testbed.training.checkpoint import load_state, save_state
from testbed.training.journal import Checkpointer, remove_checkpoint, resume


@dataclass
class RunState:
    """Everything a run needs to continue: saved whole at each checkpoint (data only:
    :mod:`testbed.training.checkpoint`), so a resumed run draws the
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
    cfg = build_config(cls.Config, plan.config, plan.label)
    check_pairing(cls, problem, plan.label, cfg)
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

    With ``checkpoint`` the state is saved there (data only; rows appended to ``<checkpoint>.log``) every ``every``
    iterations (atomically), and a run whose checkpoint exists continues from it.
    """
    ck, st = resume(checkpoint)
    if st is None:
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
        metrics = problem_metrics(problem, st.policy, 0.0, avg, target)
        check_finite(plan.run_id, t, metrics, checkpoint)
        st.rows.append(_row(plan, t, st.samples if counted else None, st.queries if counted else None,
                            metrics, st.loss, st.step_extras))
        st.wall.append(time.perf_counter() - start)

    def step(t: int) -> None:
        _update(st, st.rng, plan.run_id, t, checkpoint)

    train(st, plan.iterations, step, record, plan.eval_every, _saver(st, ck, start), every)
    out: dict = {"wall": st.wall}
    if averaged:
        out["avg_probs"] = st.prob_sum / plan.iterations
    if st.trajectory is not None:
        out["trajectory"] = st.trajectory
    return st.rows, st.policy, out


def _update(st, rng, ids, t: int, checkpoint) -> None:
    """Update t of one run (``ids`` its run id) or a stack (a list of run ids, one loss each), checked finite."""
    if st.prob_sum is not None:
        st.prob_sum += st.policy.probs()  # pi_{t-1}, the iterate this update plays (the average's next term)
    result = st.algo.update(st.policy, rng)
    loss = result.loss if result.loss is None or isinstance(ids, str) else np.broadcast_to(result.loss, (len(ids),))
    check_finite(ids, t, {"the policy parameters": result.policy.params, "the loss": loss, **result.extras},
                 checkpoint)
    _keep(st, result)


def _keep(st, step: Step) -> None:
    """After an update (of one run or a stack): keep the step, count samples and queries."""
    st.policy, st.loss, st.step_extras = step.policy, step.loss, step.extras
    st.samples += step.samples or 0
    st.queries += step.queries or 0


def _saver(st, ck: Checkpointer | None, start: float):
    """The loop's checkpoint callback (None without a checkpoint): the state, saved atomically as data, its rows and
    wall times appended to the checkpoint's sidecar (:mod:`testbed.training.journal`)."""
    if ck is None:
        return None

    def save() -> None:
        st.elapsed = time.perf_counter() - start
        ck.save(st)
    return save


def _row(plan: RunPlan, t: int, samples, queries, metrics: dict, loss, extras: dict) -> dict:
    row = {"run_id": plan.run_id, "problem": plan.problem, "algorithm": plan.label, "seed": plan.seed,
           "iteration": t, "samples": samples, "queries": queries, **metrics, "loss": loss,
           **{k: extras.get(k) for k in EXTRAS}}
    loggers.emit(row)  # --log tensorboard|wandb: live, the same names
    return row


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
    prob_sum: np.ndarray | None = None  # preference problems: sum of pi_0 … pi_{t−1} per member, as in run_one


def shared_members(cls, cfg, problems: list) -> tuple[list[int], list[int]]:
    """(owner, lead): owner[s] is the stack member that computes grid point s, lead[m] the grid point member m stands
    for (the first of its points). A configuration that draws no random numbers (:meth:`Algorithm.draws` False) runs
    a function of its problem, its configuration and pi_0 alone (a stack's pi_0 takes none:
    :func:`~testbed.policies.initial_stack`), so the points of one stack that share a problem are one computation,
    done once; otherwise every point is its own member."""
    if cls.draws(cfg):
        return list(range(len(problems))), list(range(len(problems)))
    first: dict = {}  # id(problem) -> (member, its lead point)
    owner = [first.setdefault(id(p), (len(first), s))[0] for s, p in enumerate(problems)]
    return owner, [s for _, s in first.values()]


def generator_used(rng: np.random.Generator, seed: int) -> bool:
    """Whether ``rng`` (made by ``default_rng(seed)``) was drawn from or spawned from since (a draw from a
    ``jumped()`` copy, or from numpy's or torch's global generators, is not seen)."""
    fresh = np.random.default_rng(seed).bit_generator
    return (rng.bit_generator.state != fresh.state
            or rng.bit_generator.seed_seq.n_children_spawned != fresh.seed_seq.n_children_spawned)


def _new_batch_state(plans: list[RunPlan], problems: list, cls, cfg, lead: list[int]) -> BatchState:
    for plan, problem in zip(plans, problems):
        check_pairing(cls, problem, plan.label, cfg)
    rngs = [np.random.default_rng(plans[s].seed) for s in lead]
    members = [problems[s] for s in lead]
    batch = problem_batch(members)
    algo = cls(cfg, batch, rngs)
    averaged = isinstance(batch, PreferenceBandit)
    return BatchState(0, initial_stack(members, **(plans[0].policy or {})), algo, rngs, [[] for _ in plans],
                      algo.initial_samples, algo.initial_queries, None, {}, 0.0, [],
                      np.zeros(batch.pi_ref.shape) if averaged else None)


def run_batch(plans: list[RunPlan], problems: list, checkpoint: Path | None = None,
              every: int = 0) -> list[tuple[list[dict], Policy, dict]]:
    """Run S grid points that differ only in seed (and in the instance, of one shape) as one stack.

    The same algorithm code as :func:`run_one`, on a stacked policy and a :class:`~testbed.problems.ProblemBatch`
    (or :class:`~testbed.problems.PreferenceBatch`): random draws come seed by seed from each run's own
    generator, the update and the exact metrics run on the whole stack in one array computation,
    and each run's rows, final policy and wall times are what :func:`run_one` gives it
    (``tests/test_batched.py`` checks bit-for-bit equality). Points whose runs are one computation (a
    configuration that draws nothing, on a shared problem: :func:`shared_members`) are computed once and each
    gets its own rows. Checkpoints as in :func:`run_one`.
    """
    cls = ALGORITHMS[plans[0].algorithm]
    cfg = build_config(cls.Config, plans[0].config, plans[0].label)
    owner, lead = shared_members(cls, cfg, problems)
    ids = [plans[s].run_id for s in lead]
    ck, st = resume(checkpoint)
    if st is not None and len(st.rngs) != len(lead):  # written with a member per seed (before shared members): start
        remove_checkpoint(checkpoint)                  # again (the same run: it draws nothing)
        ck, st = resume(checkpoint)
    if st is None:
        st = _new_batch_state(plans, problems, cls, cfg, lead)
    cfg, first, averaged = st.algo.config, plans[0], st.prob_sum is not None
    target = None if averaged else cls.kl_target(cfg, st.algo.problem)
    counted = cls.counted(cfg)
    start = time.perf_counter() - st.elapsed

    def record(t: int) -> None:
        avg = st.prob_sum / t if averaged and t > 0 else None
        metrics = stack_metric_arrays(st.algo.problem, st.policy.log_probs(), avg, target)
        check_finite(ids, t, metrics, checkpoint)
        values = {k: None if v is None else np.asarray(v, dtype=float).tolist() for k, v in metrics.items()}
        loss = None if st.loss is None else np.broadcast_to(np.asarray(st.loss, dtype=float), (len(lead),)).tolist()
        extras = {k: np.asarray(v, dtype=float).tolist() for k, v in st.step_extras.items()}
        samples, queries = (st.samples, st.queries) if counted else (None, None)
        for s, plan in enumerate(plans):
            m = owner[s]
            st.rows[s].append(_row(plan, t, samples, queries, {k: None if v is None else v[m] for k, v in values.items()},
                                   None if loss is None else loss[m], {k: v[m] for k, v in extras.items()}))
        st.wall.append(time.perf_counter() - start)

    def step(t: int) -> None:
        _update(st, st.rngs, ids, t, checkpoint)

    train(st, first.iterations, step, record, first.eval_every, _saver(st, ck, start), every)
    if len(lead) < len(plans):
        for rng, s in zip(st.rngs, lead):  # the shared members' runs must not have depended on their seed
            if generator_used(rng, plans[s].seed):
                raise RuntimeError(f"{cls.__name__}.draws says {plans[s].label!r} takes no random numbers, but its run "
                                   "used its generator: its seeds cannot share one computation")
    avg = st.prob_sum / first.iterations if averaged else None
    return [(rows, member(st.policy, owner[s]), {"wall": st.wall} | ({"avg_probs": avg[owner[s]]} if averaged else {}))
            for s, rows in enumerate(st.rows)]


TRAJECTORY_COLUMNS = ("run_id", "iteration", "context", "action", "prob", "avg_prob")


RUN_FILES = {"config.yaml", "metrics.csv", "policies.npz", "meta.json", "timings.json", "trajectory.csv"}


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing --out unless --overwrite, and even then unless it is a run folder."""
    results.prepare_out(out, overwrite, RUN_FILES)


def batch_groups(spec: Spec, jobs: int = 1, batch: bool = True) -> list[list[int]]:
    """Which grid points run together as one stack (indices into ``spec.runs``, in order).

    Points that differ only in seed, or in an instance of the same kind and shape, form a group when
    their algorithm can update a stack (``Algorithm.batchable``); with ``jobs`` > 1 a group is split
    into ``jobs`` near-equal stacks so that every process gets work, except that the seeds of a configuration that
    draws nothing (``Algorithm.draws``) on one problem, one computation, stay together. ``batch=False``: one point
    each.
    """
    groups: dict = {}
    for i, plan in enumerate(spec.runs):
        problem = spec.problems[plan.problem]
        cls = ALGORITHMS[plan.algorithm]
        kind = (plan.policy or {}).get("kind") or default_kind(problem)
        cfg = build_config(cls.Config, plan.config, plan.label)
        ok = batch and not plan.trajectory and cls.batchable(cfg, kind)
        key = (("batch", plan.algorithm, plan.label, dump_yaml(plan.config), dump_yaml(plan.policy), plan.iterations,
                plan.eval_every, type(problem).__name__, getattr(problem, "rewards", problem.pi_ref).shape,
                getattr(problem, "features", np.empty(0)).shape) if ok else ("single", i))
        # the seeds of a configuration that draws nothing, on one problem, are one computation (shared_members):
        # they stay in one stack
        unit = i if cls.draws(cfg) else plan.problem
        groups.setdefault(key, {}).setdefault(unit, []).append(i)
    out = []
    for units in groups.values():
        units = list(units.values())
        for part in np.array_split(np.arange(len(units)), min(max(jobs, 1), len(units))):
            out.append(sorted(i for k in part for i in units[k]))
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
        return load_state(done)
    ckpt = Path(partial) / f"{key}.ckpt" if partial else None
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):  # a non-finite result is reported in one line by check_finite
        runs = run_batch(plans, problems, ckpt, every) if len(plans) > 1 else [run_one(plans[0], problems[0], ckpt, every)]
    result = [(rows, policy.params, policy.probs(), extra,
               extra["wall"][-1] if extra["wall"] else time.perf_counter() - t0) for rows, policy, extra in runs]
    if done is not None:
        save_state(done, result)
        remove_checkpoint(ckpt)
    return result


def input_files(spec: Spec) -> list[str]:
    """The files a spec reads: instance files of its problems, the path fields of its algorithms and the source of
    a user rule."""
    from testbed.algorithms.user import module_file

    files = [e["file"] for e in spec.problem_entries.values() if "file" in e]
    for plan in spec.runs:
        files += [plan.config[f.name] for f in dataclasses.fields(ALGORITHMS[plan.algorithm].Config)
                  if f.metadata.get("check") == "path" and plan.config.get(f.name)]
        files += [f for f in (module_file(plan.config.get("module")),) if f]  # a user rule's source
    return files


def group_key(spec: Spec, group: list[int], inputs: dict[str, str]) -> str:
    """The name of a group's files in <out>.partial: a hash of what it computes (its runs' settings, their
    problems and the hashes of the input files they name), so a resume finds work by content."""
    plans = [dataclasses.asdict(spec.runs[i]) for i in group]
    problems = {p["problem"]: spec.problem_entries.get(p["problem"]) for p in plans}
    text = json.dumps([plans, problems], sort_keys=True, default=str)
    return results.content_key([plans, problems, {k: v for k, v in inputs.items() if k in text}])


def run_all(spec: Spec, jobs: int = 1, progress: bool = True, partial: Path | None = None, every: int = 0,
            batch: bool = True, backend: str = "local", ray_address: str | None = None,
            inputs: dict[str, str] | None = None) -> list[tuple]:
    """Run every grid point, in groups (:func:`batch_groups`), on ``backend``
    (:mod:`testbed.experiments.backends`: serial, ``jobs`` processes, or Ray). Each run draws only from
    its own seed, torch uses one thread and a stacked run gives each member what it gives alone, so the
    results depend neither on ``jobs`` nor on ``batch`` nor on ``backend``."""
    groups = batch_groups(spec, jobs, batch)
    total = sum(p.iterations for p in spec.runs)
    inputs = results.input_hashes(input_files(spec)) if inputs is None else inputs
    args = [([spec.runs[i] for i in g], [spec.problems[spec.runs[i].problem] for i in g],
             str(partial) if partial else None, group_key(spec, g, inputs), every) for g in groups]
    sizes = [sum(spec.runs[i].iterations for i in g) for g in groups]
    with tqdm(total=total, desc=spec.name, unit="it", disable=not progress, file=sys.stderr,
              mininterval=0.5, leave=False) as bar:
        finished = map_tasks(_worker, args, backend, jobs, lambda k: bar.update(sizes[k]), ray_address)
    out: list = [None] * len(spec.runs)
    for g, res in zip(groups, finished):
        for i, r in zip(g, res):
            out[i] = r
    return out


def run_spec(spec: Spec, out: str | Path, overwrite: bool = False, progress: bool = True, jobs: int = 1,
             resume: bool = False, checkpoint_every: int = 50, batch: bool = True, backend: str = "local",
             ray_address: str | None = None, reuse: bool = False) -> Path:
    """Run every grid point of ``spec`` and write the run folder ``out`` atomically.

    While it runs, <out>.partial holds each finished run and a checkpoint of each unfinished one
    (every ``checkpoint_every`` iterations), named by what they compute (:func:`group_key`); after an
    interruption (even SIGKILL) ``resume=True`` continues from there and gives the same files as an
    uninterrupted run (all but timings.json), provided the resolved spec and the input files are unchanged;
    ``reuse=True`` resumes a changed spec, keeping the work of the runs that did not change. A lock on
    ``out`` refuses a second run into the same folder.
    """
    out = Path(out)
    prepare_out(out, overwrite)
    with results.out_lock(out):
        prepare_out(out, overwrite)  # again, holding the lock: a run that just finished there is not replaced
        return _run_spec(spec, out, overwrite, progress, jobs, resume or reuse, checkpoint_every, batch, backend,
                         ray_address, reuse)


def _run_spec(spec: Spec, out: Path, overwrite: bool, progress: bool, jobs: int, resume: bool,
              checkpoint_every: int, batch: bool, backend: str, ray_address: str | None, reuse: bool) -> Path:
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
    inputs = results.input_hashes(input_files(spec))
    if inputs:
        resolved["inputs"] = inputs
    config_text = dump_yaml(resolved)
    partial = results.open_partial(out, config_text, resume, overwrite, reuse=reuse)
    try:
        finished = run_all(spec, jobs, progress, partial, checkpoint_every, batch, backend, ray_address, inputs)
    except NumericalError:
        if not any(p.suffix in (".ckpt", ".done") for p in partial.iterdir()):
            shutil.rmtree(partial)  # nothing to keep
        raise
    except InputError:  # a user rule's own code failed (a wrong-shape return, an exit): nothing of this run is kept
        if not resume:  # (a resumed run's earlier work stays for --resume / --reuse)
            shutil.rmtree(partial, ignore_errors=True)
        raise
    rows, policies, timings, trajectory = [], {}, {}, []
    for plan, (run_rows, params, probs, extra, seconds) in zip(spec.runs, finished):
        timings[plan.run_id] = seconds
        rows += [r | {"wall_time": w} for r, w in zip(run_rows, extra["wall"])]
        policies[f"{plan.run_id}/params"] = params
        policies[f"{plan.run_id}/probs"] = probs
        if "avg_probs" in extra:
            policies[f"{plan.run_id}/avg_probs"] = extra["avg_probs"]
        trajectory += extra.get("trajectory", [])

    with results.RunFolder(out) as folder:
        save_npz(folder.tmp / "policies.npz", policies)
        files = ("policies.npz",)
        if trajectory:
            atomic_write_text(folder.tmp / "trajectory.csv", results.csv_text(trajectory, TRAJECTORY_COLUMNS))
            files += ("trajectory.csv",)
        meta = {"spec": spec.name, "source": spec.source, "git_commit": results.git_commit(),
                "versions": results.versions(), "seeds": sorted({p.seed for p in spec.runs}), "runs": len(spec.runs)}
        folder.finish(config_text, rows, COLUMNS, meta, files, {"seconds": timings})
    shutil.rmtree(partial, ignore_errors=True)
    return out


read_metrics = results.read_metrics
