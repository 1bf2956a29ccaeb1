"""Diffusion experiment specs (YAML): denoiser × sampler × prompts × reward × algorithms × seeds, validated up
front (one line naming the field, before any model is built)::

    name: digits_compress
    kind: diffusion
    model: {kind: tiny, size: 16, widths: [16, 32], layers: 1}       # or {kind: stable_diffusion, ...} (paper)
    pretrain: {data: digits, steps: 1500, batch: 64, lr: 2e-3}        # the tiny model's offline pre-training
    sampler: {scheduler: ddim, steps: 6, eta: 1.0, guidance: 1.0, train_timesteps: 100}
    prompts: {kind: classes}                                           # class labels; paper: {kind: animals}
    reward: {kind: jpeg_compressibility}   # jpeg_incompressibility | classifier | aesthetic | {module: pkg.mod:fn}
    algorithms:
      - {name: rebel, eta: 1.0}
      - {name: ppo, train: {batch: 64}}   # an algorithm's own prompts per iteration (equal reward queries)
    seeds: [0, 1, 2]
    train: {iterations: 30, batch: 32, minibatch: 32, lr: 3e-4}
    lora: {r: 4, alpha: 4}                                             # optional: pi_ref = adapter disabled

The paper's spec (experiments/diffusion/sd15_aesthetic.yaml) has ``model: {kind: stable_diffusion, name, resolution,
dtype, gradient_checkpointing}`` (:mod:`testbed.diffusion.stable`) and ``reward: {kind: aesthetic, weights, clip}``
(:mod:`testbed.diffusion.aesthetic`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from testbed.algorithms.base import build_config, count, flag, nonneg, one_of, positive
from testbed.errors import InputError, nonneg_int, positive_int, positive_number
from testbed.io import read_yaml

TOP_KEYS = {"name", "description", "kind", "model", "pretrain", "sampler", "prompts", "reward", "algorithms", "seeds",
            "train", "lora", "reference", "dry_run"}
REWARDS = ("jpeg_compressibility", "jpeg_incompressibility", "classifier", "aesthetic")
MODEL_KINDS = ("tiny", "stable_diffusion")
DATA = ("digits", "shapes")
DATA_CHANNELS = {"digits": 1, "shapes": 1}  # both grayscale
DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")


@dataclass
class SamplerConfig:
    scheduler: str = one_of("ddim", ("ddim", "ddpm"), "the stochastic sampler: DDIM (eta > 0) or DDPM")
    steps: int = count(6, "denoising steps per trajectory (> 0)")
    eta: float = positive(1.0, "DDIM's eta > 0 (1: DDPM's variance at DDIM's timesteps)")
    guidance: float = nonneg(1.0, "classifier-free guidance weight w >= 0 (1: conditional only)")
    train_timesteps: int = count(100, "the noise schedule's length (Stable Diffusion: 1000)")
    beta_schedule: str = one_of("linear", ("linear", "scaled_linear", "squaredcos_cap_v2"), "diffusers' beta schedule")
    beta_start: float = positive(1e-4, "first beta")
    beta_end: float = positive(0.02, "last beta")


@dataclass
class PretrainConfig:
    data: str = one_of("digits", DATA, "scikit-learn's bundled 8×8 digits (upsampled) or procedural shapes")
    steps: int = count(1500, "AdamW steps of the denoising (epsilon) loss")
    batch: int = count(64, "images per step")
    lr: float = positive(2e-3, "AdamW learning rate (cosine decay)")
    seed: int | None = dataclasses.field(default=None, metadata={"doc": "pre-training seed (null: each run's seed, "
                                                                         "one cached model per seed)"})
    uncond: float = nonneg(0.1, "share of labels replaced by the null class (classifier-free guidance)")
    cache: str = dataclasses.field(default="", metadata={"doc": "cache folder ('' = $TESTBED_CACHE or ~/.cache/rebel-testbed)"})


@dataclass
class DiffusionTrainConfig:
    iterations: int = count(30, "updates (each: one batch of prompts)")
    batch: int = count(32, "prompts per iteration")
    minibatch: int = count(32, "items per optimiser step (pairs for REBEL/DPO, trajectories for PPO)")
    grad_accum: int = count(1, "micro-batches per minibatch")
    lr: float = positive(3e-4, "AdamW learning rate")
    lr_schedule: str = one_of("constant", ("linear", "constant"), "learning-rate schedule")
    adam_eps: float = positive(1e-8, "AdamW epsilon")
    weight_decay: float = nonneg(0.0, "AdamW weight decay")
    max_grad_norm: float = nonneg(1.0, "gradient-norm clipping (0: off)")
    eval_every: int = count(5, "evaluate on the fixed eval prompts and noise every k iterations")
    eval_prompts: int = count(20, "eval prompts (cycled through the prompt list), with fixed noise")
    dtype: str = one_of("float32", DTYPE_NAMES, "the denoiser's dtype (Stable Diffusion: model.dtype when given)")
    threads: int = dataclasses.field(default=1, metadata={"doc": "torch CPU threads of the runs and of the tiny model's "
                                                                  "pre-training (0: torch's default)"})
    save: bool = flag(False, "save the final denoiser weights")
    rollouts: str = one_of("sharded", ("sharded",), "one process: its share is the whole batch")


@dataclass
class DiffusionSpec:
    name: str
    source: str
    raw: dict
    model: dict
    pretrain: PretrainConfig
    sampler: SamplerConfig
    prompts: dict
    reward: dict
    algorithms: list[tuple[str, object, dict]]
    seeds: list[int]
    train: DiffusionTrainConfig
    lora: dict | None
    reference: str


def _mapping(v, where: str) -> dict:
    if not isinstance(v, dict):
        raise InputError(f"{where} must be a mapping (got {v!r})")
    return dict(v)


def _check_model(raw: dict) -> dict:
    m = _mapping(raw.get("model", {"kind": "tiny"}), "model")
    kind = m.get("kind", "tiny")
    if kind not in MODEL_KINDS:
        raise InputError(f"model.kind must be one of {', '.join(MODEL_KINDS)} (got {kind!r})")
    if kind == "stable_diffusion":
        keys = ("name", "revision", "resolution", "dtype", "gradient_checkpointing", "rollout_batch")
        bad = sorted(set(m) - {"kind", *keys})
        if bad:
            raise InputError(f"model: unknown key(s) {bad}; expected {', '.join(keys)}")
        m.setdefault("name", "stable-diffusion-v1-5/stable-diffusion-v1-5")
        m.setdefault("resolution", 512)
        if not isinstance(m["name"], str) or not m["name"]:
            raise InputError(f"model.name must be a hub name or a local folder (got {m['name']!r})")
        if positive_int("model.resolution", m["resolution"]) % 64:
            raise InputError(f"model.resolution = {m['resolution']} is not divisible by 64 (the VAE's 8 × the UNet's 8)")
        positive_int("model.rollout_batch", m.setdefault("rollout_batch", 16))  # latents per UNet pass, no gradients
        if "dtype" in m and m["dtype"] not in DTYPE_NAMES:
            raise InputError(f"model.dtype must be one of {', '.join(DTYPE_NAMES)} (got {m['dtype']!r})")
        if not isinstance(m.get("gradient_checkpointing", False), bool):
            raise InputError(f"model.gradient_checkpointing must be true or false (got {m['gradient_checkpointing']!r})")
        return {**m, "kind": kind}
    bad = sorted(set(m) - {"kind", "size", "channels", "widths", "layers", "seed"})
    if bad:
        raise InputError(f"model: unknown key(s) {bad}; expected kind, size, channels, widths, layers, seed")
    m = {"kind": "tiny", "size": 16, "channels": 1, "widths": [16, 32], "layers": 1, "seed": 0, **m}
    for k in ("size", "channels", "layers"):
        positive_int(f"model.{k}", m[k])
    nonneg_int("model.seed", m["seed"])
    w = m["widths"]
    if not isinstance(w, list) or not w or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in w):
        raise InputError(f"model.widths must be a non-empty list of positive integers (got {w!r})")
    if any(v % min(8, w[0]) for v in w):
        raise InputError(f"model.widths {w} must be multiples of the group-norm size {min(8, w[0])}")
    down = 2 ** (len(w) - 1)
    if m["size"] % down:
        raise InputError(f"model.size = {m['size']} is not divisible by the UNet's down-sampling factor {down} "
                         f"(2^(len(widths) - 1))")
    return m


def _check_reward(raw) -> dict:
    r = _mapping(raw, "reward")
    if "module" in r:
        from testbed.llm.checks import check_reward_module
        check_reward_module(r["module"], "reward.module")
        return {"kind": "module", **r}
    kind = r.get("kind")
    if kind not in REWARDS:
        raise InputError(f"reward.kind must be one of {', '.join(REWARDS)} or a reward.module PKG.MOD:FN (got {kind!r})")
    bad = sorted(set(r) - {"kind", "quality", "weights", "clip"})
    if bad:
        raise InputError(f"reward: unknown key(s) {bad}; expected kind, quality (JPEG), weights and clip (aesthetic)")
    if kind == "aesthetic":
        for k, what in (("weights", "the path of the LAION predictor's state dict"), ("clip", "a CLIP model name")):
            if k in r or k == "weights":
                if not isinstance(r.get(k), str) or not r[k]:
                    raise InputError(f"reward.{k} must be {what} (got {r.get(k)!r})")
    elif set(r) & {"weights", "clip"}:
        raise InputError(f"reward.weights and reward.clip go with reward.kind aesthetic (got {kind})")
    q = r.get("quality", 95)
    if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100:
        raise InputError(f"reward.quality must be an integer JPEG quality in 1..100 (got {q!r})")
    return r


def parse_diffusion_spec(raw: dict, source: str = "<spec>") -> DiffusionSpec:
    from testbed.algorithms import on_track

    algos_known = on_track("diffusion")
    raw = _mapping(raw, "spec")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise InputError(f"spec: unknown key(s) {unknown}; expected some of {sorted(TOP_KEYS)}")
    name = raw.get("name") or Path(source).stem
    model = _check_model(raw)
    sampler = build_config(SamplerConfig, _mapping(raw.get("sampler", {}), "sampler"), "sampler")
    if sampler.beta_end <= sampler.beta_start or sampler.beta_end >= 1:
        raise InputError(f"sampler.beta_end must be in (beta_start, 1) (got {sampler.beta_end!r})")
    if sampler.steps > sampler.train_timesteps:
        raise InputError(f"sampler.steps = {sampler.steps} exceeds sampler.train_timesteps = {sampler.train_timesteps}")
    if sampler.scheduler == "ddim" and sampler.steps >= sampler.train_timesteps:
        raise InputError(f"sampler.steps = {sampler.steps} must be below sampler.train_timesteps = "
                         f"{sampler.train_timesteps} for DDIM (its timesteps are offset by 1: the first would be t = T)")
    pretrain = build_config(PretrainConfig, _mapping(raw.get("pretrain", {}), "pretrain"), "pretrain")
    if pretrain.seed is not None and (isinstance(pretrain.seed, bool) or not isinstance(pretrain.seed, int)
                                      or pretrain.seed < 0):
        raise InputError(f"pretrain.seed must be null or a non-negative integer (got {pretrain.seed!r})")
    if model["kind"] == "tiny" and model["channels"] != DATA_CHANNELS[pretrain.data]:
        raise InputError(f"model.channels = {model['channels']} does not match pretrain.data {pretrain.data}, whose images "
                         f"have {DATA_CHANNELS[pretrain.data]} channel(s)")
    train = build_config(DiffusionTrainConfig, _mapping(raw.get("train", {}), "train"), "train")
    if isinstance(train.threads, bool) or not isinstance(train.threads, int) or train.threads < 0:
        raise InputError(f"train.threads must be a non-negative integer (got {train.threads!r})")
    prompts = _mapping(raw.get("prompts", {"kind": "classes"}), "prompts")
    if prompts.get("kind") not in ("classes", "animals"):
        raise InputError(f"prompts.kind must be classes (the tiny model's labels) or animals (got {prompts.get('kind')!r})")
    if set(prompts) - {"kind"}:
        raise InputError(f"prompts: unknown key(s) {sorted(set(prompts) - {'kind'})}; expected kind")
    if (prompts["kind"] == "animals") != (model["kind"] == "stable_diffusion"):
        raise InputError("prompts.kind: animals goes with model.kind stable_diffusion, classes with tiny")
    reward = _check_reward(raw.get("reward"))
    if reward.get("kind") == "aesthetic" and model["kind"] != "stable_diffusion":
        raise InputError("reward.kind: aesthetic (the LAION predictor on CLIP) needs RGB images of model.kind stable_diffusion")
    algos = raw.get("algorithms")
    if not isinstance(algos, list) or not algos:
        raise InputError("algorithms must be a non-empty list of {name: ..., parameters}")
    parsed = []
    for i, a in enumerate(algos):
        a = _mapping(a, f"algorithms[{i}]")
        aname = a.pop("name", None)
        over = _mapping(a.pop("train"), f"algorithms[{i}].train") if "train" in a else {}
        if set(over) - {"batch"}:
            raise InputError(f"algorithms[{i}].train: unknown key(s) {sorted(set(over) - {'batch'})}; expected batch "
                             f"(this algorithm's prompts per iteration)")
        batch = positive_int(f"algorithms[{i}].train.batch", over["batch"]) if over else train.batch
        if aname not in algos_known:
            raise InputError(f"algorithms[{i}].name must be one of {', '.join(algos_known)} (got {aname!r})")
        where = f"algorithms[{i}] ({aname})"
        cls = algos_known[aname]
        cfg = build_config(cls.Config, a, where, "diffusion")
        why = cls.check_track(cfg, "diffusion")
        if why:
            raise InputError(f"{where}: {why}")
        M = getattr(cfg, "minibatch", 0) or train.minibatch
        if batch % M:
            raise InputError(f"{where}: the batch holds {batch} items, not divisible into minibatches of {M}")
        if M % train.grad_accum:
            raise InputError(f"train.grad_accum = {train.grad_accum} does not divide the minibatch of {M}")
        parsed.append((aname, cfg, {"name": aname, **dataclasses.asdict(cfg), **({"train": over} if over else {})}))
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(positive_int("seeds", seeds)))
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InputError(f"seeds must be a positive count or a list of non-negative integers (got {seeds!r})")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds must be distinct (got {seeds!r}: a repeated seed would repeat its runs' ids)")
    lora = raw.get("lora")
    if lora is not None:
        lora = _mapping(lora, "lora")
        bad = sorted(set(lora) - {"r", "alpha", "target_modules"})
        if bad:
            raise InputError(f"lora: unknown key(s) {bad}; expected r, alpha, target_modules")
        positive_int("lora.r", lora.setdefault("r", 4))
        if "alpha" in lora:
            positive_number("lora.alpha", lora["alpha"])
        t = lora.get("target_modules")
        if "target_modules" in lora and (not isinstance(t, list) or not t or any(not isinstance(v, str) or not v for v in t)):
            raise InputError(f"lora.target_modules must be a non-empty list of module names (got {t!r})")
    reference = raw.get("reference", "adapter" if lora else "copy")
    if reference not in ("adapter", "copy"):
        raise InputError(f"reference must be adapter or copy (got {reference!r})")
    if reference == "adapter" and lora is None:
        raise InputError("reference: adapter needs a lora block")
    return DiffusionSpec(name, source, raw, model, pretrain, sampler, prompts, reward, parsed, seeds, train, lora,
                         reference)


def load_diffusion_spec(path: str | Path, overrides=()) -> DiffusionSpec:
    """An image spec file, with ``key=value`` overrides applied (:mod:`testbed.experiments.overrides`)."""
    from testbed.experiments.overrides import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec {str(path)!r} does not exist")
    return parse_diffusion_spec(apply_overrides(read_yaml(path, "spec"), overrides, TOP_KEYS), str(path))
