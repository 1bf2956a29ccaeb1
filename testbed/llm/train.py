"""The LM run loop and run folder: the bandit runner's loop with an LM policy and LM rewards.

For every (algorithm, seed): build the policy (optionally LoRA), the reward and (PPO) the critic;
prepare them with ``accelerate`` (device placement, DDP over gloo/NCCL, mixed precision, gradient
accumulation); then per iteration draw a batch of prompts, ``algorithm.update`` (shared losses),
decay the LR linearly, and log a row of the shared metrics schema plus the TRL-style names.

Run folder (written by process 0, built under a temporary name and renamed when complete):
``config.yaml``, ``metrics.csv``, ``samples/<run_id>/iter_<t>.jsonl`` (generations on the eval
prompts at each evaluation), ``checkpoints/<run_id>/`` (``save_pretrained``), ``meta.json``. A spec
whose reward is ``bradley_terry`` (the TL;DR-style study of :mod:`testbed.llm.tldr`) also gets
``preferences.jsonl`` and ``reward_model.pt`` (built once, before the runs) and
``samples/<run_id>/heldout.jsonl`` (the final held-out generations beside the reference's, judged
by the oracle); its final metric row holds the ``eval/*`` columns (win rate with a 95% interval).

``peak_memory_mb`` is the peak resident set (CPU; on a GPU the peak allocated memory) since the run
started, above the process's memory at that moment: every model, optimiser state and activation the
run holds, measured the same way for every algorithm (Linux ``/proc/self/clear_refs`` resets the peak).
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from testbed import results
from testbed.algorithms import ALGORITHMS
from testbed.errors import InputError, env_threads
from testbed.experiments.spec import dump_yaml
from testbed.llm.backend import LMBackend, backend_state, restore_backend
from testbed.llm.checks import check_before_build, lm_input_files, run_key
from testbed.llm.critic import PolicyAndValue, make_critic
from testbed.llm.data import check_prompts
from testbed.llm.distributed import gather_rng, restore_rng
from testbed.llm.evaluation import evaluate
from testbed.llm.models import load_causal_lm, load_tokenizer
from testbed.llm.policy import LMPolicy, apply_lora, unwrap
from testbed.llm.shards import Shards, stream_seed
from testbed.llm.spec import LMSpec
from testbed.llm.task import make_prompts, make_reward, peak_memory_mb, reset_peak_memory
from testbed.results import LM_COLUMNS
from testbed.run_table import make_run_id
from testbed.training import check_finite, loggers, torch_threads, train
from testbed.training.checkpoint import load_state, save_state
from testbed.training.journal import Checkpointer, remove_checkpoint, resume


def get_accelerator(spec: LMSpec):
    """One Accelerator per process (accelerate keeps global state), CPU unless a GPU is present, with the spec's
    DeepSpeed / FSDP plugin (:func:`testbed.llm.distributed.lm_accelerator`). Each algorithm's ``optimise`` sets
    its own gradient-accumulation steps."""
    from testbed.llm.distributed import lm_accelerator
    return lm_accelerator(spec)


def build(spec: LMSpec, algo_name: str, algo_cfg, seed: int, study=None, model=None, critic=None, reward=None):
    """The policy, reward, critic and algorithm of one run, prepared by accelerate. ``model``, ``critic`` and
    ``reward`` replace the spec's (tests: an LM that is a logit table, tests/test_cross_track.py)."""
    acc = get_accelerator(spec)
    tr = spec.train
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(spec.model)
    cls = ALGORITHMS[algo_name]
    if model is None:
        base = load_causal_lm(spec.model)
        if critic is None and cls.needs_critic(algo_cfg):
            critic = make_critic(base, spec.lora)
        model = apply_lora(base, spec.lora["r"], spec.lora["alpha"], spec.lora["dropout"], spec.lora["target_modules"]) \
            if spec.lora else base
    model = model.to(acc.device)
    ref = spec.reference if spec.reference != "auto" else "auto"
    policy = LMPolicy(model, tokenizer, temperature=tr.temperature, top_k=tr.top_k, top_p=tr.top_p,
                      max_new_tokens=tr.max_new_tokens, ref=ref)
    if critic is not None:
        critic = critic.to(acc.device)
    reward = reward if reward is not None else make_reward(spec, tokenizer, acc.device, study)
    ctx = LMBackend(policy, reward, critic, acc, tr, np.random.default_rng(seed), acc.num_processes, acc.process_index)
    algo = cls(algo_cfg, ctx, ctx.rng)
    # the module the optimiser updates (what accelerate prepares): the policy, or policy and critic in one
    module = PolicyAndValue(unwrap(policy.model), critic) if critic is not None else policy.model
    params = [p for p in module.parameters() if p.requires_grad]
    # the fused kernel (CPU and CUDA): one pass over all parameters instead of a Python loop per tensor
    opt = torch.optim.AdamW(params, lr=tr.lr, eps=tr.adam_eps, weight_decay=tr.weight_decay, fused=True)
    prepared, opt = acc.prepare(module, opt)
    ctx.prepared, ctx.optimizer, ctx.params = prepared, opt, params
    if module is policy.model:
        policy.model = prepared
    ctx.scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt.optimizer if hasattr(opt, "optimizer") else opt,
        lambda t: max(0.0, 1 - t / tr.iterations) if tr.lr_schedule == "linear" else 1.0)
    return ctx, algo


def _gather_mean(acc, t: torch.Tensor, replicated: bool, total: bool = False) -> float:
    t = t.detach().float().reshape(-1).to(acc.device)
    if not replicated and acc.num_processes > 1:
        t = acc.gather(t)
    return float(t.sum() if total else t.mean())


CHECKPOINTED_ALGO_FIELDS = ("cursor", "order", "rule_state")  # offline data position (DPO, SFT); a user rule's state


def _save_checkpoint(ck: Checkpointer, ctx: LMBackend, algo, loop: dict) -> None:
    """Everything the loop needs to continue: trainable weights (policy, critic), optimiser and
    scheduler state, numpy and torch RNG states, the prompt order and cursor, rows and generations."""
    state = {**backend_state(ctx), "algo": {k: getattr(algo, k) for k in CHECKPOINTED_ALGO_FIELDS if hasattr(algo, k)},
             **loop}
    ck.save(state)  # rows and generations: appended to its sidecar (testbed.training.journal)


def run_one(spec: LMSpec, algo_name: str, algo_cfg, seed: int, run_id: str, bar=None,
            checkpoint: Path | None = None, every: int = 0, study=None, log=None):
    """One run's metric rows, sample generations and the final model (unwrapped) and tokenizer.

    With ``checkpoint`` (process 0 writes it) the state is saved every ``every`` iterations, and a run
    whose checkpoint exists continues from it (on several processes too: each one's RNG is in it, and each shard's)."""
    mem_base = reset_peak_memory()
    ctx, algo = build(spec, algo_name, algo_cfg, seed, study)
    tr, acc = spec.train, ctx.accelerator
    label = algo.label(algo.config)  # the rows' algorithm (a user rule: its name), once per run
    replicated = tr.rollouts == "replicated" or ctx.world == 1
    # generation RNG: the same on every process for replicated rollouts, one stream per process otherwise
    torch.manual_seed(seed if replicated else stream_seed(seed, ctx.rank))
    shards = Shards(ctx, tr.shards, seed, CHECKPOINTED_ALGO_FIELDS) if tr.shards > 1 else None  # K processes' streams
    prompts = make_prompts(spec.prompts) if algo.needs_prompts(algo.config) else []
    eval_prompts = make_prompts(spec.eval_prompts) if ctx.reward is not None else []
    for field, entry, texts in (("prompts", spec.prompts, prompts), ("eval_prompts", spec.eval_prompts, eval_prompts)):
        if "file" not in entry:  # prompt files were checked before any model was built (check_before_build)
            check_prompts(ctx.policy.tokenizer, texts, field)
    order, cursor = ctx.rng.permutation(len(prompts)) if prompts else None, 0
    start, samples, queries = time.perf_counter(), 0, 0
    rows, generations = [], []

    def row(t, step=None, secs=None):
        lr = ctx.scheduler.get_last_lr()[0]
        r = {c: None for c in LM_COLUMNS}
        r.update(run_id=run_id, problem=spec.name, algorithm=label, seed=seed, iteration=t, samples=samples,
                 queries=queries, wall_time=time.perf_counter() - start, peak_memory_mb=peak_memory_mb(mem_base), lr=lr)
        if step is not None:
            st = step.extras
            for k in ("objective/scores", "objective/kl", "objective/entropy", "objective/non_score_reward",
                      "objective/rlhf_reward", "rewards/chosen", "rewards/rejected", "rewards/margins",
                      "rewards/accuracies"):
                if k in st:
                    r[k] = _gather_mean(acc, st[k], replicated)
            if "val/num_eos_tokens" in st:
                r["val/num_eos_tokens"] = _gather_mean(acc, st["val/num_eos_tokens"], replicated, total=True)
            if "tokens" in st:
                r["tokens_per_s"] = _gather_mean(acc, st["tokens"], replicated, total=True) / secs
            if "value_loss" in st:
                r["loss/value"] = _gather_mean(acc, st["value_loss"], False)
            r["loss"] = r["loss/policy"] = _gather_mean(acc, torch.tensor([step.loss]), False)
            r["reward"], r["kl_ref"] = r["objective/scores"], r["objective/kl"]
            r["eps"] = (step.samples * (1 if replicated else ctx.world)) / secs
        if study is not None and t == tr.iterations:
            final, held = study.final_eval(algo, eval_prompts, seed, tr.max_prompt_length)
            r.update(final)
            r["eval/scores"] = final["eval/rm_score"]
            generations.extend({"iteration": "heldout", **g} for g in held)
        elif eval_prompts and study is None and (t % tr.eval_every == 0 or t == tr.iterations):
            r["eval/scores"], gens = evaluate(ctx, eval_prompts, seed, t)
            generations.extend(gens)
        loggers.emit(r)  # --log tensorboard|wandb: live, the same names
        return r

    st = SimpleNamespace(t=0, step=None, secs=None)
    ck, state = resume(checkpoint)
    if state is not None:
        restore_backend(ctx, state)
        restore_rng(state["torch_rngs"], acc)  # each process's own stream (sharded rollouts)
        if shards is not None:
            shards.streams = state["shard_rngs"]
        for k, v in state["algo"].items():
            setattr(algo, k, v)
        order, cursor, rows, generations = state["order"], state["cursor"], state["rows"], state["generations"]
        samples, queries, st.t = state["samples"], state["queries"], state["t"]
        start = time.perf_counter() - state["elapsed"]
        if bar is not None:
            bar.update(state["t"])

    def step(t: int) -> None:
        nonlocal order, cursor, samples, queries
        t0 = time.perf_counter()
        q = qm = None
        if prompts:
            idx = []
            while len(idx) < tr.batch:
                if cursor >= len(order):
                    order, cursor = ctx.rng.permutation(len(prompts)), 0
                take = order[cursor:cursor + tr.batch - len(idx)]
                idx += take.tolist()
                cursor += len(take)
            if not replicated:
                idx = np.array_split(np.asarray(idx), ctx.world)[ctx.rank].tolist()
            q, qm = ctx.policy.encode([prompts[i] for i in idx], tr.max_prompt_length)
        result = algo.lm_update(q, qm) if shards is None else shards.update(algo, q, qm)
        check_finite(run_id, t, {"the loss": result.loss}, checkpoint)
        ctx.scheduler.step()
        samples += result.samples * (1 if replicated else ctx.world)
        queries += result.queries * (1 if replicated else ctx.world)
        st.step, st.secs = result, time.perf_counter() - t0

    def record(t: int) -> None:
        rows.append(row(t, st.step, st.secs) if t else row(0))
        check_finite(run_id, t, {k: v for k, v in rows[-1].items() if isinstance(v, float)}, checkpoint)
        if log is not None:  # metrics.csv so far, every iteration (atomically)
            log(rows)

    def save() -> None:
        rngs = gather_rng(acc)  # on every process (a collective), before process 0 writes
        if acc.is_main_process:
            _save_checkpoint(ck, ctx, algo, {"t": st.t, "order": order, "cursor": cursor, "rows": rows,
                                                     "torch_rngs": rngs, "shard_rngs": shards and shards.streams,
                                                     "generations": generations, "samples": samples,
                                                     "queries": queries, "elapsed": time.perf_counter() - start})

    def after(t: int) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"score": f"{rows[-1]['objective/scores'] or 0:.3f}"}, refresh=False)

    train(st, tr.iterations, step, record, 1, save if checkpoint is not None else None, every, after)
    model = unwrap(ctx.policy.model)
    return rows, generations, model, ctx.policy.tokenizer


LM_RUN_FILES = {"config.yaml", "metrics.csv", "meta.json", "timings.json", "samples", "checkpoints",
                "preferences.jsonl", "reward_model.pt"}


def resolved_spec(spec: LMSpec) -> dict:
    """A finished run folder's config.yaml, but its process count and input hashes: the spec with every algorithm's
    resolved configuration, the seeds and every train field."""
    return {**spec.raw, "algorithms": [{**a, "sequences_per_item": ALGORITHMS[n].sequences_per_item(c)}
                                       for n, c, a in spec.algorithms],
            "seeds": spec.seeds, "train": {k: getattr(spec.train, k) for k in spec.train.__dataclass_fields__}}


def prepare_lm_out(out: Path, overwrite: bool) -> None:
    results.prepare_out(out, overwrite, LM_RUN_FILES)


def run_lm_spec(spec: LMSpec, out: str | Path, overwrite: bool = False, progress: bool = True,
                resume: bool = False, checkpoint_every: int = 0, reuse: bool = False) -> Path | None:
    """Run every (algorithm, seed) of ``spec``; process 0 writes the run folder atomically.

    With ``checkpoint_every`` K > 0 (any number of processes), <out>.partial holds each finished run (rows,
    generations, saved model) and a checkpoint of the unfinished one every K iterations, named by what the
    run computes (:func:`run_key`); ``resume`` continues from there if the spec and its input files are
    unchanged, ``reuse`` keeps the finished runs that did not change. Process 0 holds a lock on ``out``."""
    out = Path(out)
    check_before_build(spec)
    # torch's intra-op threads: 1 per process, as the bandit runner's workers use (on a shared or small machine
    # torch's default of one per core made a tiny-model iteration 3-12x slower); TESTBED_TORCH_THREADS=N sets N,
    # 0 keeps torch's default; the caller's count is given back after the run
    with torch_threads(env_threads()):
        acc = get_accelerator(spec)
        if acc.is_main_process:
            prepare_lm_out(out, overwrite)
        with results.out_lock(out) if acc.is_main_process else contextlib.nullcontext():
            if acc.is_main_process:
                prepare_lm_out(out, overwrite)  # again, holding the lock: a run that just finished there is kept
            return _run_lm_spec(spec, out, acc, overwrite, progress, resume or reuse, checkpoint_every, reuse)


def _run_lm_spec(spec: LMSpec, out: Path, acc, overwrite: bool, progress: bool, resume: bool,
                 checkpoint_every: int, reuse: bool) -> Path | None:
    main = acc.is_main_process
    inputs = results.input_hashes(lm_input_files(spec))
    spec_text = dump_yaml({**spec.raw, **({"inputs": inputs} if inputs else {})})
    partial = results.open_partial(out, spec_text, resume, overwrite, create=bool(checkpoint_every or resume),
                                   reuse=reuse) if main else results.partial_dir(out)
    acc.wait_for_everyone()  # process 0 has made (or checked) <out>.partial
    use_partial = partial.is_dir() and (checkpoint_every or resume)
    runs = [(n, c, s, make_run_id(n, i, s)) for i, (n, c, _) in enumerate(spec.algorithms) for s in spec.seeds]
    keys = {make_run_id(n, i, s): run_key(spec, e, s, inputs) for i, (n, _, e) in enumerate(spec.algorithms) for s in spec.seeds}
    total = spec.train.iterations * len(runs)
    all_rows, timings = [], {}
    folder = results.RunFolder(out).__enter__() if main else None
    tmp = folder.tmp if main else None
    if main:
        (tmp / "samples").mkdir()
    study, study_summary = None, None
    try:
        if spec.reward.get("kind") == "bradley_terry":
            if acc.num_processes > 1:
                raise InputError("reward kind bradley_terry (the TL;DR-style pipeline) runs in one process for now")
            study, study_summary, runs = _prepare_study(spec, tmp, runs)
        with tqdm(total=total, desc=spec.name, unit="it", disable=not (progress and main), file=sys.stderr,
                  mininterval=0.5) as bar:
            for name, cfg, seed, run_id in runs:
                t0 = time.perf_counter()
                done = partial / f"{keys[run_id]}.done"
                if use_partial and done.is_file():
                    rows, gens = load_state(done)
                    timings[run_id] = time.perf_counter() - t0
                    all_rows += rows
                    if main:
                        _write_run(tmp, spec, run_id, gens, None, None, partial, keys[run_id])
                    bar.update(spec.train.iterations)
                    continue
                ckpt = partial / f"{keys[run_id]}.ckpt" if use_partial else None
                log = (lambda r, done=list(all_rows): folder.log_rows(done + r, LM_COLUMNS)) if main else None
                rows, gens, model, tok = run_one(spec, name, cfg, seed, run_id, bar, ckpt, checkpoint_every or 1, study, log)
                if use_partial and main:
                    if spec.train.save:
                        model.save_pretrained(partial / "checkpoints" / keys[run_id])
                        tok.save_pretrained(partial / "checkpoints" / keys[run_id])
                    save_state(done, (rows, gens))
                    remove_checkpoint(ckpt)
                if use_partial:
                    acc.wait_for_everyone()
                    model = None  # saved above; copied from the partial folder
                timings[run_id] = time.perf_counter() - t0
                all_rows += rows
                if main:
                    _write_run(tmp, spec, run_id, gens, model, tok, partial, keys[run_id])
                model = tok = None
                # the one Accelerator keeps every prepared model and optimiser: drop this run's (15 runs of
                # the 3-seed study grew past 24 GB without it), keeping its step count as it was
                step = acc.step
                acc.free_memory()
                acc.step = step
        acc.wait_for_everyone()
        if not main:
            return None
        resolved = {**resolved_spec(spec), "processes": acc.num_processes, **({"inputs": inputs} if inputs else {})}
        measured_times = {"seconds": timings}
        if study_summary:
            study_summary = dict(study_summary)
            measured_times["study_seconds"] = study_summary.pop("seconds", None)
        meta = {"spec": spec.name, "source": spec.source, "git_commit": results.git_commit(),
                "versions": results.versions(("transformers", "peft", "accelerate")), "seeds": spec.seeds,
                "runs": len(runs), "processes": acc.num_processes, "device": str(acc.device),
                **({"study": study_summary} if study_summary else {})}
        folder.finish(dump_yaml(resolved), all_rows, LM_COLUMNS, meta, timings=measured_times)
    except BaseException:
        if main:
            folder.__exit__(*sys.exc_info())
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return out


def _prepare_study(spec: LMSpec, tmp: Path, runs: list) -> tuple:
    """Build the TL;DR-style pipeline's preference pairs and reward model in ``tmp``; point DPO at the pairs and
    SFT at the demonstrations (the chosen response of each pair)."""
    import dataclasses

    from testbed.llm.spec import PREFERENCES
    from testbed.llm.tldr import Study

    t0 = time.perf_counter()
    print(f"{spec.name}: preparing the study (oracle-labelled pairs, reward model) ...", file=sys.stderr, flush=True)
    study = Study(spec.reward)
    tokenizer = load_tokenizer(spec.model)
    policy = LMPolicy(load_causal_lm(spec.model), tokenizer, temperature=spec.train.temperature, top_k=spec.train.top_k,
                      top_p=spec.train.top_p, max_new_tokens=spec.train.max_new_tokens, ref=None)
    summary = study.prepare(policy, make_prompts(spec.prompts), tmp, spec.train.batch, spec.train.max_prompt_length)
    del policy
    gc.collect()
    data = {2: str(tmp / "preferences.jsonl"), 1: str(tmp / "demonstrations.jsonl")}  # by sequences per item
    runs = [(n, dataclasses.replace(c, dataset=data[ALGORITHMS[n].sequences_per_item(c)])
             if getattr(c, "dataset", "") == PREFERENCES else c, s, r) for n, c, s, r in runs]
    print(f"{spec.name}: {summary['pairs']} oracle-labelled pairs, reward model agrees with the oracle on "
          f"{summary['rm_heldout_agreement']:.1%} of {summary['heldout_pairs']} held-out pairs "
          f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    return study, summary, runs


def _write_run(tmp: Path, spec: LMSpec, run_id: str, gens: list[dict], model, tok, partial: Path, key: str) -> None:
    """Sample generations per evaluation, and the final model (saved now, or copied from <out>.partial)."""
    from testbed.llm.data import write_jsonl
    for t in sorted({g["iteration"] for g in gens}, key=str):
        name = f"iter_{t:06d}.jsonl" if isinstance(t, int) else f"{t}.jsonl"
        write_jsonl(tmp / "samples" / run_id / name, [g for g in gens if g["iteration"] == t])
    if spec.train.save:
        if model is not None:
            model.save_pretrained(tmp / "checkpoints" / run_id)
            tok.save_pretrained(tmp / "checkpoints" / run_id)
        else:
            shutil.copytree(partial / "checkpoints" / key, tmp / "checkpoints" / run_id)
