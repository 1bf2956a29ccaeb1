"""Diffusion runs through THE loop (:func:`testbed.training.train`) and the one run-folder writer
(:mod:`testbed.results`): for every (algorithm, seed) the pre-trained denoiser (cached per seed), optionally
LoRA, the sampler and the reward; per iteration a batch of prompts, ``algorithm.diffusion_update`` (the
algorithm's own update on the back-end), and a row of the LM schema (``reward`` = mean score of the batch,
``kl_ref`` = the sample KL estimate of its trajectories; every ``eval_every`` iterations ``eval/scores`` and
``eval/kl`` (the exact per-step Gaussian KL summed over the trajectory) on fixed eval prompts and fixed noise).

Run folder: config.yaml, metrics.csv, meta.json, timings.json (wall time, peak memory: measured, not
compared), ``samples/<run_id>.npz`` (the final eval images; ``samples/reference-s<seed>.npz`` the reference
policy's on the same prompts and noise). Same spec and seed → the same metrics bytes.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from testbed import results
from testbed.algorithms import ALGORITHMS
from testbed.diffusion.backend import DiffusionBackend
from testbed.diffusion.policy import DiffusionPolicy, check_lora_targets, with_lora
from testbed.diffusion.sampler import Sampler, make_scheduler
from testbed.diffusion.spec import DiffusionSpec
from testbed.errors import InputError
from testbed.experiments.spec import dump_yaml
from testbed.io import save_npz
from testbed.llm.backend import backend_state, restore_backend
from testbed.llm.checks import module_files, run_key
from testbed.llm.task import peak_memory_mb, reset_peak_memory
from testbed.results import LM_COLUMNS
from testbed.run_table import make_run_id
from testbed.training import check_finite, loggers, torch_threads, train
from testbed.training.checkpoint import load_state, save_state
from testbed.training.journal import remove_checkpoint, resume

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_LORA_TARGETS = ("conv1", "conv2")
RUN_FILES = {"config.yaml", "metrics.csv", "meta.json", "timings.json", "samples"}


def make_backend(policy: DiffusionPolicy, reward, tr, rng: np.random.Generator, algo_name: str, algo_cfg):
    """The back-end and the algorithm on it: AdamW over the trainable parameters, prepared by accelerate."""
    from testbed.llm.train import get_accelerator

    acc = get_accelerator(SimpleNamespace(train=tr, accelerate=SimpleNamespace(mixed_precision="no")))
    ctx = DiffusionBackend(policy, reward, None, acc, tr, rng, 1, 0)
    algo = ALGORITHMS[algo_name](algo_cfg, ctx, ctx.rng)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tr.lr, eps=tr.adam_eps, weight_decay=tr.weight_decay)
    prepared, opt = acc.prepare(policy.model, opt)
    ctx.prepared, ctx.optimizer, ctx.params = prepared, opt, params
    ctx.scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt.optimizer if hasattr(opt, "optimizer") else opt,
        lambda t: max(0.0, 1 - t / tr.iterations) if tr.lr_schedule == "linear" else 1.0)
    return ctx, algo


def build(spec: DiffusionSpec, algo_name: str, algo_cfg, seed: int, tr=None):
    """The back-end, the algorithm and the number of prompts: the tiny model pre-trained on its data (cached per
    seed) and its classes, or Stable Diffusion (:mod:`testbed.diffusion.stable`) and its prompt list."""
    from testbed.diffusion.rewards import make_reward

    s = spec.sampler
    sampler = Sampler(make_scheduler(s.scheduler, s.train_timesteps, s.beta_schedule, s.beta_start, s.beta_end),
                      s.steps, s.eta)
    if spec.model["kind"] == "stable_diffusion":
        from testbed.diffusion.stable import stable_policy
        policy, classes = stable_policy(spec, sampler, seed)
        data = None
    else:
        from testbed.diffusion.data import pretrained
        pre_seed = seed if spec.pretrain.seed is None else spec.pretrain.seed
        net, classes, data = pretrained(spec.model, spec.pretrain, s, pre_seed, DTYPES[spec.train.dtype],
                                        spec.train.threads)
        m = spec.model
        policy = DiffusionPolicy(with_lora(net, spec.lora, TINY_LORA_TARGETS), sampler,
                                 (m["channels"], m["size"], m["size"]), s.guidance, classes, spec.reference)
    reward = make_reward(spec.reward, data)
    ctx, algo = make_backend(policy, reward, tr or spec.train, np.random.default_rng(seed), algo_name, algo_cfg)
    if hasattr(reward, "to"):  # a reward model: on the policy's device
        reward.to(ctx.accelerator.device)
    return ctx, algo, classes


@torch.no_grad()
def evaluate(ctx: DiffusionBackend, classes: int, n: int, seed: int, reference: bool = False):
    """Mean score and exact KL to the reference on ``n`` fixed prompts (0, 1, …, cycled) and fixed noise; images."""
    pol = ctx.policy
    q, qm = pol.encode([i % classes for i in range(n)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000_019 * (seed + 1))
        y = ctx.sample(q, qm, ref=reference)
    images = pol.decode(pol.images(y))  # decoded once: scored and returned
    score = ctx.score_images(images, q)
    kl = pol.kl_to_reference(q, y) if not reference else torch.zeros(n)
    return float(score.mean()), float(kl.mean()), images.float().cpu().numpy(), q.cpu().numpy()


CHECKPOINTED_ALGO_FIELDS = ("prompt_stats",)  # PPO's per-prompt reward buffers (prompt_buffer > 0), across iterations


def run_one(spec: DiffusionSpec, algo_name: str, algo_cfg, seed: int, run_id: str, checkpoint: Path | None = None,
            every: int = 0, train_over: dict | None = None):
    """One run's rows and its final eval images (and the reference's); ``train_over``: the algorithm's own
    ``train`` entries (its prompts per iteration)."""
    tr = dataclasses.replace(spec.train, **(train_over or {}))
    with torch_threads(tr.threads):  # (the caller's thread count given back after the run)
        return _run_one(spec, tr, algo_name, algo_cfg, seed, run_id, checkpoint, every)


def _run_one(spec: DiffusionSpec, tr, algo_name: str, algo_cfg, seed: int, run_id: str, checkpoint: Path | None,
             every: int):
    mem_base = reset_peak_memory()
    ctx, algo, classes = build(spec, algo_name, algo_cfg, seed, tr)
    torch.manual_seed(seed)
    start, samples, queries, rows = time.perf_counter(), 0, 0, []
    st = SimpleNamespace(t=0, step=None, secs=None, final=None)
    ck, state = resume(checkpoint)
    if state is not None:
        restore_backend(ctx, state)
        for k, v in state.get("algo", {}).items():  # (a checkpoint written before the field: none)
            setattr(algo, k, v)
        rows, samples, queries, st.t = state["rows"], state["samples"], state["queries"], state["t"]
        start = time.perf_counter() - state["elapsed"]

    def step(t: int) -> None:
        nonlocal samples, queries
        t0 = time.perf_counter()
        q, qm = ctx.policy.encode(ctx.rng.integers(classes, size=tr.batch).tolist())
        result = algo.diffusion_update(q, qm)
        check_finite(run_id, t, {"the loss": result.loss}, checkpoint)
        ctx.scheduler.step()
        samples, queries = samples + result.samples, queries + result.queries
        st.step, st.secs = result, time.perf_counter() - t0

    def record(t: int) -> None:
        r = {c: None for c in LM_COLUMNS}
        r.update(run_id=run_id, problem=spec.name, algorithm=algo_name, seed=seed, iteration=t, samples=samples,
                 queries=queries, wall_time=time.perf_counter() - start, peak_memory_mb=peak_memory_mb(mem_base),
                 lr=ctx.scheduler.get_last_lr()[0])
        if t:
            ex = st.step.extras
            for k in ("objective/scores", "objective/kl", "objective/rlhf_reward", "rewards/margins",
                      "rewards/accuracies"):
                if k in ex:
                    r[k] = float(ex[k].double().mean())
            r["loss"] = r["loss/policy"] = st.step.loss
            r["reward"], r["kl_ref"] = r["objective/scores"], r["objective/kl"]
            r["eps"] = st.step.samples / st.secs
        if t % tr.eval_every == 0 or t == tr.iterations:
            r["eval/scores"], r["eval/kl"], images, labels = evaluate(ctx, classes, tr.eval_prompts, seed)
            st.final = (t, images, labels)  # the last iteration's: the run's final images, not sampled again
        rows.append(r)
        check_finite(run_id, t, {k: v for k, v in r.items() if isinstance(v, float)}, checkpoint)
        loggers.emit(r)  # --log tensorboard|wandb: live, the same names

    def save() -> None:
        algo_state = {k: getattr(algo, k) for k in CHECKPOINTED_ALGO_FIELDS if hasattr(algo, k)}
        ck.save({**backend_state(ctx), "algo": algo_state, "rows": rows, "samples": samples, "queries": queries, "t": st.t,
                 "elapsed": time.perf_counter() - start})

    train(st, tr.iterations, step, record, 1, save if checkpoint is not None else None, every)
    done, images, labels = st.final if st.final is not None else (None, None, None)
    if done != tr.iterations:
        _, _, images, labels = evaluate(ctx, classes, tr.eval_prompts, seed)
    _, _, ref_images, _ = evaluate(ctx, classes, tr.eval_prompts, seed, reference=True)
    ctx.accelerator.free_memory()
    return rows, {"images": images, "labels": labels, "reference": ref_images}


def _pretrain_all(spec: DiffusionSpec) -> None:
    from testbed.diffusion.data import pretrained

    if spec.model["kind"] != "tiny":
        return
    for seed in sorted({s if spec.pretrain.seed is None else spec.pretrain.seed for s in spec.seeds}):
        pretrained(spec.model, spec.pretrain, spec.sampler, seed, threads=spec.train.threads)


def check_tiny(spec: DiffusionSpec) -> None:
    """Before any work (pre-training included): the tiny model's dtype runs here, and its LoRA targets exist (checked
    on the UNet built from the spec, random weights)."""
    from testbed.diffusion.models import tiny_unet
    from testbed.diffusion.stable import device

    dtype = spec.train.dtype
    if dtype == "bfloat16":
        raise InputError("train.dtype bfloat16 is not supported for the tiny model (its sampler and rewards run in "
                         "the model's dtype, which numpy lacks): use float32 or float64")
    if dtype == "float16" and device().type == "cpu":
        raise InputError("train.dtype float16 needs a GPU (CUDA): on CPU the tiny model's half-precision sampler gives "
                         "NaN losses; use float32 or float64 here")
    m = spec.model
    with torch.random.fork_rng(devices=[]):  # (tiny_unet seeds torch's generator)
        net = tiny_unet(m["size"], m["channels"], 1, tuple(m["widths"]), m["layers"])
    check_lora_targets(net, spec.lora, TINY_LORA_TARGETS, "tiny UNet")


def run_diffusion_spec(spec: DiffusionSpec, out: str | Path, overwrite: bool = False, progress: bool = True,
                       resume: bool = False, checkpoint_every: int = 0, reuse: bool = False) -> Path:
    """Every (algorithm, seed) of ``spec`` into the run folder ``out`` (written atomically); with
    ``checkpoint_every`` K, ``<out>.partial`` holds finished runs and a checkpoint every K iterations, and
    ``resume`` continues from it."""
    out = Path(out)
    if spec.model["kind"] == "stable_diffusion":
        from testbed.diffusion.stable import check_stable
        check_stable(spec)  # dtype on this device, weights found: before anything is written
    else:
        check_tiny(spec)
    results.prepare_out(out, overwrite, RUN_FILES)
    with results.out_lock(out):  # one writer per folder, stale leftovers removed (as every track)
        results.prepare_out(out, overwrite, RUN_FILES)
        return _run_diffusion_spec(spec, out, overwrite, progress, resume or reuse, checkpoint_every, reuse)


def _run_diffusion_spec(spec: DiffusionSpec, out: Path, overwrite: bool, progress: bool, resume: bool,
                        checkpoint_every: int, reuse: bool) -> Path:
    inputs = results.input_hashes(module_files(spec))  # a reward module's source
    spec_text = dump_yaml({**spec.raw, **({"inputs": inputs} if inputs else {})})
    partial = results.open_partial(out, spec_text, resume, overwrite, create=bool(checkpoint_every or resume),
                                   reuse=reuse)
    use_partial = partial.is_dir() and bool(checkpoint_every or resume)
    runs = [(n, c, s, make_run_id(n, i, s), e.get("train")) for i, (n, c, e) in enumerate(spec.algorithms) for s in spec.seeds]
    keys = {make_run_id(n, i, s): run_key(spec, e, s, inputs) for i, (n, _, e) in enumerate(spec.algorithms) for s in spec.seeds}
    all_rows, timings = [], {}
    _pretrain_all(spec)  # before any run's memory window and timer: a pipeline step, cached
    with results.RunFolder(out) as folder:
        (folder.tmp / "samples").mkdir()
        for name, cfg, seed, run_id, over in runs:
            t0 = time.perf_counter()
            done = partial / f"{keys[run_id]}.done"
            if use_partial and done.is_file():
                rows, imgs = load_state(done)
            else:
                ckpt = partial / f"{keys[run_id]}.ckpt" if use_partial else None
                rows, imgs = run_one(spec, name, cfg, seed, run_id, ckpt, checkpoint_every or 1, over)
                if use_partial:
                    save_state(done, (rows, imgs))
                    remove_checkpoint(ckpt)
            timings[run_id] = time.perf_counter() - t0
            all_rows += rows
            save_npz(folder.tmp / "samples" / f"{run_id}.npz", {"images": imgs["images"], "labels": imgs["labels"]})
            save_npz(folder.tmp / "samples" / f"reference-s{seed}.npz", {"images": imgs["reference"],
                                                                          "labels": imgs["labels"]})
            if progress:
                last = rows[-1]
                print(f"{spec.name}: {run_id} eval/scores {last['eval/scores']:.4g} eval/kl {last['eval/kl']:.3g} "
                      f"({timings[run_id]:.0f}s)", file=sys.stderr)
        resolved = {**spec.raw, "algorithms": [{**a, "sequences_per_item": ALGORITHMS[n].sequences_per_item(c)}
                                               for n, c, a in spec.algorithms], "seeds": spec.seeds,
                    "train": {k: getattr(spec.train, k) for k in spec.train.__dataclass_fields__},
                    **({"inputs": inputs} if inputs else {})}
        meta = {"spec": spec.name, "source": spec.source, "git_commit": results.git_commit(),
                "versions": results.versions(("diffusers", "accelerate")), "seeds": spec.seeds, "runs": len(runs),
                "track": "diffusion", "models_held": {n: 1 + (spec.reference == "copy") for n, _, _ in spec.algorithms}}
        folder.finish(dump_yaml(resolved), all_rows, LM_COLUMNS, meta, timings={"seconds": timings})
    shutil.rmtree(partial, ignore_errors=True)
    return out
