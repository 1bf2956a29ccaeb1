"""LM experiment specs (YAML): model × prompts × reward × algorithms × seeds, validated up front.

::

    name: toy_rebel
    model: {name: tiny:gpt2, hidden: 32, layers: 2, heads: 2, seed: 0}   # or a known name, or {path: DIR}
    lora: {r: 8, alpha: 16}                 # optional; pi_ref is then the model with the adapter disabled
    prompts: {kind: toy, count: 64, seed: 0}   # or {file: prompts.jsonl} or {hf_dataset: NAME, split, field}
    eval_prompts: {kind: toy, count: 16, seed: 1}
    reward: {kind: function, name: count_token, token: good}   # or {kind: model, name/path: ...}
    # or {kind: bradley_terry, pairs, epochs, lr, seed, holdout, target_words, length_penalty, temperature}:
    # the TL;DR-style pipeline of testbed.llm.tldr (prompts: {kind: tldr}; DPO's dataset: preferences)
    algorithms:
      - {name: rebel, eta: 1, beta: 0.05}
    seeds: [0, 1, 2]
    train: {iterations: 20, batch: 32, minibatch: 16, lr: 1e-3, max_new_tokens: 6}
    # or Hugging Face's names: learning_rate, adam_epsilon, gradient_accumulation_steps, per_device_train_batch_size,
    # num_train_epochs (HF_TRAIN_NAMES: what each becomes)
    accelerate: {num_processes: 1, mixed_precision: "no", deepspeed: ds_zero2.json}

Every bad field raises :class:`InputError` with a one-line message before any model is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from testbed.algorithms.base import build_config, count, flag, nonneg, nonneg_count, one_of, positive
from testbed.errors import ROW_BYTES, InputError, check_memory, positive_int
from testbed.io import read_yaml
from testbed.llm.checks import PROMPT_BYTES, check_lora, check_prompt_lengths, check_reward_module
from testbed.llm.models import REWARD_MODEL_KEYS, check_model, reward_model_entry

TOP_KEYS = {"name", "description", "kind", "model", "lora", "prompts", "eval_prompts", "reward", "algorithms", "seeds",
            "train", "accelerate", "reference"}
REWARD_KEYS = {"kind", "token", "module", *REWARD_MODEL_KEYS}
BT_KEYS = {"kind", "pairs", "epochs", "lr", "seed", "holdout", "target_words", "length_penalty", "temperature"}
PREFERENCES = "preferences"
"""DPO's ``dataset: preferences``: the oracle-labelled pairs a bradley_terry reward builds in the run folder."""
PROMPT_KEYS = {"kind", "count", "seed", "file", "hf_dataset", "split", "field", "min_len", "max_len"}
PROMPT_COUNT = 64  # prompts of a toy/tldr set without a count
HF_TRAIN_NAMES = {"learning_rate": "lr", "adam_epsilon": "adam_eps", "gradient_accumulation_steps": "grad_accum",
                  "per_device_train_batch_size": "minibatch", "num_train_epochs": "iterations"}
"""The Hugging Face ``TrainingArguments`` names the ``train`` block also accepts, and the field each sets. The first
three are renamings; ``per_device_train_batch_size`` (items per micro-batch on each process) becomes
minibatch = per_device_train_batch_size × grad_accum × processes, and ``num_train_epochs`` (passes over the prompts,
or an offline algorithm's rows; fractions allowed) becomes iterations = ⌈num_train_epochs × rows / batch⌉ (each
iteration reads the next ``batch`` of them, reshuffled at the end of each pass)."""


@dataclass
class TrainConfig:
    iterations: int = count(20, "updates (each: one batch of prompts)")
    batch: int = count(32, "prompts (offline DPO/SFT: rows) per iteration, across all processes")
    minibatch: int = count(16, "items per optimiser step (pairs for REBEL/online DPO, responses for PPO/RLOO, rows offline)")
    grad_accum: int = count(1, "micro-batches per minibatch (gradient accumulation through accelerate)")
    lr: float = positive(1e-3, "AdamW learning rate (decays linearly to 0 over the iterations)")
    lr_schedule: str = one_of("linear", ("linear", "constant"), "learning-rate schedule")
    adam_eps: float = positive(1e-5, "AdamW epsilon (official: 1e-5)")
    weight_decay: float = nonneg(0.0, "AdamW weight decay")
    max_grad_norm: float = nonneg(1.0, "gradient-norm clipping (0: off)")
    temperature: float = positive(0.7, "sampling temperature, also dividing the logits of every log-prob (official: 0.7)")
    top_k: int = dataclasses.field(default=0, metadata={"doc": "top-k sampling (0: off); sampling only: log-probs, KL "
                                                            "and ratios use the full softmax (as TRL)"})
    top_p: float = positive(1.0, "nucleus sampling (1: off); sampling only, like top_k")
    max_new_tokens: int = count(16, "fixed response length; tokens after the first EOS become padding (official: 53)")
    max_prompt_length: int = count(512, "prompts are truncated to this many tokens")
    missing_eos_penalty: float | None = dataclasses.field(default=1.0, metadata={
        "doc": "a response with no EOS: score -penalty (replace) or score - penalty (subtract); null: off"})
    missing_eos_mode: str = one_of("replace", ("replace", "subtract"), "official REBEL (replace with -penalty) or TRL (subtract)")
    missing_eos_test: str = one_of("eos", ("eos", "pad"), "finished = holds an EOS (ours), or holds a pad token "
                                   "(official: an EOS as the last token counts as missing)")
    eval_every: int = count(5, "evaluate (and write sample generations) every k iterations")
    eval_micro_batch: int = nonneg_count(0, "eval prompts per generate call (0: all); N: per-prompt streams, same metrics")
    rollouts: str = one_of("sharded", ("sharded", "replicated"), "each process samples its share of the batch, or every "
                           "process samples the whole batch with the same seed (bit-for-bit the 1-process run)")
    shards: int = count(1, "one process computes what this many processes with sharded rollouts compute: the batch in "
                        "shards, each sampled from its own stream, per-shard statistics, gradients averaged (tests)")
    save: bool = flag(True, "save the final policy with save_pretrained")

    def validate(self, where: str) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"{where}.top_k must be a non-negative integer (got {self.top_k!r})")
        if self.top_p > 1:
            raise InputError(f"{where}.top_p must be in (0, 1] (got {self.top_p!r})")
        if self.missing_eos_penalty is not None:
            from testbed.errors import nonneg_number
            self.missing_eos_penalty = nonneg_number(f"{where}.missing_eos_penalty", self.missing_eos_penalty)


@dataclass
class AccelerateConfig:
    num_processes: int = count(1, "data-parallel processes the spec is meant for (torchrun --nproc_per_node)")
    mixed_precision: str = one_of("no", ("no", "bf16", "fp16"), "autocast through accelerate")
    deepspeed: str = dataclasses.field(default="", metadata={"doc": "a DeepSpeed JSON config (ZeRO stage), GPU runs"})
    fsdp: dict | None = dataclasses.field(default=None, metadata={"doc": "FullyShardedDataParallelPlugin arguments"})
    gpu_memory_gb: float = positive(80.0, "per-GPU memory the plan compares against")


@dataclass
class LMSpec:
    name: str
    source: str
    raw: dict
    model: dict
    lora: dict | None
    prompts: dict
    eval_prompts: dict
    reward: dict
    algorithms: list[tuple[str, object, dict]]  # (name, config, raw entry)
    seeds: list[int]
    train: TrainConfig
    accelerate: AccelerateConfig
    reference: str


def _mapping(v, where: str) -> dict:
    if not isinstance(v, dict):
        raise InputError(f"{where} must be a mapping (got {v!r})")
    return v


def _check_prompts(entry, where: str, base: Path) -> dict:
    entry = dict(_mapping(entry, where))
    unknown = sorted(set(entry) - PROMPT_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(PROMPT_KEYS)}")
    if "file" in entry:
        p = Path(entry["file"])
        entry["file"] = str(p if p.is_absolute() else base / p)
        from testbed.io import read_jsonl
        read_jsonl(entry["file"], ("prompt",))
    elif "hf_dataset" in entry:
        if not isinstance(entry["hf_dataset"], str):
            raise InputError(f"{where}.hf_dataset must be a dataset name")
    else:
        if entry.get("kind", "toy") not in ("toy", "tldr"):
            raise InputError(f"{where}: give kind: toy, kind: tldr, file: PATH.jsonl or hf_dataset: NAME")
        n = positive_int(f"{where}.count", entry.get("count", PROMPT_COUNT))
        check_memory(f"{where}.count", f"{n:.3g} prompts", n * PROMPT_BYTES)
        check_prompt_lengths(entry, where)
    return entry


def _check_reward(entry, where: str, base: Path) -> dict:
    from testbed.llm.rewards import REWARD_FUNCTIONS
    entry = dict(_mapping(entry, where))
    kind = entry.get("kind")
    if kind == "bradley_terry":
        return _check_bt(entry, where)
    unknown = sorted(set(entry) - REWARD_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(REWARD_KEYS)}")
    if kind == "function":
        if entry.get("module") is not None:
            check_reward_module(entry["module"], f"{where}.module")
        elif entry.get("name") not in REWARD_FUNCTIONS:
            raise InputError(f"{where}.name must be one of {', '.join(REWARD_FUNCTIONS)} (or give module: pkg.mod:fn)")
        if "token" in entry and (not isinstance(entry["token"], str) or not entry["token"]):
            raise InputError(f"{where}.token must be a word (a token of the tokenizer) (got {entry['token']!r})")
    elif kind == "model":
        model = reward_model_entry(entry)
        if "path" in model and not Path(model["path"]).is_absolute():
            model["path"] = str(base / model["path"])
        check_model(model, where)
    else:
        raise InputError(f"{where}.kind must be function, model or bradley_terry (got {kind!r})")
    return entry


def _check_bt(entry: dict, where: str) -> dict:
    from testbed.errors import nonneg_int, positive_number
    unknown = sorted(set(entry) - BT_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(BT_KEYS)}")
    for k in ("pairs", "epochs", "target_words"):
        if k in entry:
            positive_int(f"{where}.{k}", entry[k])
    for k in ("lr", "temperature"):
        if k in entry:
            positive_number(f"{where}.{k}", entry[k])
    if "length_penalty" in entry:
        from testbed.errors import nonneg_number
        nonneg_number(f"{where}.length_penalty", entry["length_penalty"])
    if "seed" in entry:
        nonneg_int(f"{where}.seed", entry["seed"])
    h = entry.get("holdout", 0.25)
    if isinstance(h, bool) or not isinstance(h, int | float) or not 0 <= h < 1:
        raise InputError(f"{where}.holdout must be a fraction in [0, 1) (got {h!r})")
    return entry


def _hf_train_names(train: dict) -> tuple[dict, dict]:
    """The ``train`` block with the Hugging Face names of :data:`HF_TRAIN_NAMES` renamed to ours (each value
    checked under the name it was given), and the two that need the processes or the data size to convert."""
    from testbed.errors import positive_number
    train = dict(train)
    for hf, ours in HF_TRAIN_NAMES.items():
        if hf in train and ours in train:
            raise InputError(f"train: {hf} (the Hugging Face name) and {ours} set the same thing; give one of them")
    later = {}
    for hf, ours in HF_TRAIN_NAMES.items():
        if hf not in train:
            continue
        v = train.pop(hf)
        v = positive_number(f"train.{hf}", v) if hf in ("learning_rate", "adam_epsilon", "num_train_epochs") \
            else positive_int(f"train.{hf}", v)
        if hf in ("per_device_train_batch_size", "num_train_epochs"):
            later[hf] = v
        else:
            train[ours] = v
    return train, later


def _rows_per_epoch(entry: dict) -> int | None:
    """The number of prompts a prompts entry gives, where it is known before the run (None: a hub dataset)."""
    if "file" in entry:
        from testbed.io import read_jsonl
        return len(read_jsonl(entry["file"], ("prompt",)))
    return None if "hf_dataset" in entry else entry.get("count", PROMPT_COUNT)


def _epochs_to_iterations(epochs: float, train: TrainConfig, prompts: dict, parsed: list, algorithms: dict) -> int:
    """iterations = ⌈num_train_epochs × rows / batch⌉ with rows the prompts (algorithms that draw prompts) or an
    offline dataset's rows; every algorithm of the spec must pass over data of one size known now."""
    sizes = {}
    for i, (name, cfg, _) in enumerate(parsed):
        if algorithms[name].needs_prompts(cfg):
            sizes["prompts"] = _rows_per_epoch(prompts)
            if sizes["prompts"] is None:
                raise InputError("train.num_train_epochs needs a prompt set whose size is known before the run "
                                 "(kind: toy/tldr with count, or file); give train.iterations instead")
        elif getattr(cfg, "dataset", "") == PREFERENCES:
            raise InputError(f"train.num_train_epochs: algorithms[{i}] trains on the pairs the pipeline builds during "
                             "the run (dataset: preferences); give train.iterations instead")
        else:
            from testbed.io import read_jsonl
            sizes[f"algorithms[{i}].dataset"] = len(read_jsonl(cfg.dataset, ()))
    if len(set(sizes.values())) > 1:
        raise InputError(f"train.num_train_epochs: the algorithms pass over data of different sizes "
                         f"({', '.join(f'{k}: {v} rows' for k, v in sizes.items())}); give train.iterations instead")
    rows = next(iter(sizes.values()))
    return max(1, math.ceil(Fraction(repr(epochs)) * rows / train.batch))


def parse_lm_spec(raw: dict, source: str = "<spec>", world: int | None = None) -> LMSpec:
    """Validate a spec mapping. ``world``: the number of processes it will run on (default: the spec's)."""
    from testbed.algorithms import on_track
    from testbed.algorithms.user import spec_entry, spec_params

    LM_ALGORITHMS = on_track("lm")
    raw = _mapping(raw, "spec")
    base = Path(source).parent if source != "<spec>" else Path(".")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise InputError(f"spec: unknown key(s) {unknown}; expected some of {sorted(TOP_KEYS)}")
    name = raw.get("name") or Path(source).stem
    model = check_model(raw.get("model"), "model")
    if "path" in model and not Path(model["path"]).is_absolute():
        model = {**model, "path": str(base / model["path"])}
    lora = raw.get("lora")
    if lora is not None:
        lora = dict(_mapping(lora, "lora"))
        bad = sorted(set(lora) - {"r", "alpha", "dropout", "target_modules"})
        if bad:
            raise InputError(f"lora: unknown key(s) {bad}; expected r, alpha, dropout, target_modules")
        lora = check_lora(lora, model)
    train_raw, hf_later = _hf_train_names(_mapping(raw.get("train", {}), "train"))
    train = build_config(TrainConfig, train_raw, "train")
    acc = build_config(AccelerateConfig, _mapping(raw.get("accelerate", {}), "accelerate"), "accelerate")
    if acc.deepspeed:
        p = Path(acc.deepspeed)
        acc.deepspeed = str(p if p.is_absolute() else base / p)
        from testbed.llm.distributed import deepspeed_settings, read_deepspeed
        deepspeed_settings(read_deepspeed(acc.deepspeed, "accelerate.deepspeed"), "accelerate.deepspeed")
    if acc.fsdp is not None:
        from testbed.llm.distributed import check_fsdp
        check_fsdp(acc.fsdp)
    W = world or int(os.environ.get("WORLD_SIZE", 0)) or acc.num_processes
    if train.batch % W:
        raise InputError(f"train.batch = {train.batch} is not divisible across {W} processes")
    if train.batch % train.shards:
        raise InputError(f"train.shards = {train.shards} must divide train.batch = {train.batch} (each shard samples "
                         "batch / shards prompts)")
    if train.shards > 1 and W > 1:
        raise InputError(f"train.shards = {train.shards} stands for {train.shards} processes in one; run it on one "
                         f"process (this run has {W})")
    if train.shards > 1 and (train.rollouts != "sharded" or acc.deepspeed):
        raise InputError(f"train.shards = {train.shards} emulates sharded rollouts under DDP: it needs train.rollouts: "
                         "sharded and no accelerate.deepspeed")
    P, procs = (train.shards, "shards") if train.shards > 1 else (W, "processes")  # the processes the batch is split over
    train_minibatch = "train.minibatch"
    if "per_device_train_batch_size" in hf_later:
        train.minibatch = hf_later["per_device_train_batch_size"] * train.grad_accum * P
        train_minibatch = (f"train.minibatch = per_device_train_batch_size × grad_accum × {procs} = "
                           f"{hf_later['per_device_train_batch_size']} × {train.grad_accum} × {P}")
    prompts = _check_prompts(raw.get("prompts", {"kind": "toy"}), "prompts", base)
    eval_prompts = _check_prompts(raw.get("eval_prompts", {"kind": "toy", "count": 16, "seed": 1}), "eval_prompts", base)
    algos = raw.get("algorithms")
    if not isinstance(algos, list) or not algos:
        raise InputError("algorithms must be a non-empty list of {name: ..., parameters}")
    parsed = []
    for i, a in enumerate(algos):
        a = dict(spec_entry(_mapping(a, f"algorithms[{i}]")))  # {module: M:O, ...}: a user rule
        aname = a.pop("name", None)
        if aname == "user":
            a = spec_params(a, base)[0]
        if aname not in LM_ALGORITHMS:
            raise InputError(f"algorithms[{i}].name must be one of {', '.join(LM_ALGORITHMS)} (got {aname!r})")
        where = f"algorithms[{i}] ({aname})"
        cls = LM_ALGORITHMS[aname]
        for k in ("dataset",):
            if isinstance(a.get(k), str) and a[k] and a[k] != PREFERENCES and not Path(a[k]).is_absolute():
                a[k] = str(base / a[k])
        demos = _demonstrations_config(cls, a, where, raw) if a.get("dataset") == PREFERENCES else None
        if demos is not None:  # an SFT-like method: the chosen side of the pipeline's pairs are its demonstrations
            cfg = demos
        elif a.get("dataset") == PREFERENCES:  # the pairs the pipeline builds in the run folder, before the runs
            bt = isinstance(raw.get("reward"), dict) and raw["reward"].get("kind") == "bradley_terry"
            pairs = {f.name for f in dataclasses.fields(cls.Config)} >= {"mode", "dataset"}
            if not bt or not pairs or a.get("mode", "offline") != "offline":
                raise InputError(f"{where}.dataset: 'preferences' (the pairs the pipeline labels) needs offline DPO "
                                 "and a reward of kind bradley_terry")
            cfg = dataclasses.replace(build_config(cls.Config, {**a, "mode": "online", "dataset": ""}, where, "lm"),
                                      mode="offline", dataset=PREFERENCES)
            if cls.sequences_per_item(cfg) != 2:
                raise InputError(f"{where}.dataset: 'preferences' holds pairs; {aname} does not train on pairs")
        else:
            cfg = build_config(cls.Config, a, where, "lm")
        why = cls.check_track(cfg, "lm")
        if why:
            raise InputError(f"{where}: {why}")
        if getattr(cfg, "dataset", "") == PREFERENCES:
            pass
        elif getattr(cfg, "dataset", ""):
            from testbed.llm.data import read_jsonl
            read_jsonl(cfg.dataset, ("prompt", "chosen", "rejected") if cls.sequences_per_item(cfg) == 2
                       else ("prompt", "completion"))
        items = train.batch * cls.items_per_prompt(cfg)
        M, G = getattr(cfg, "minibatch", 0) or train.minibatch, getattr(cfg, "grad_accum", 0) or train.grad_accum
        m_field = f"{where}.minibatch" if getattr(cfg, "minibatch", 0) else train_minibatch
        if items % M:
            raise InputError(f"{where}: the batch holds {items} items, not divisible into minibatches of {M} ({m_field})")
        if M % (P * G):
            g_field = f"{where}.grad_accum" if getattr(cfg, "grad_accum", 0) else "train.grad_accum"
            raise InputError(f"{m_field} = {M} is not divisible by {procs} × grad_accum = {P} × {G} ({g_field})")
        label = {} if cls.label(cfg) == aname else {"label": cls.label(cfg)}  # a user rule: its own name
        parsed.append((aname, cfg, {"name": aname, **label, **dataclasses.asdict(cfg)}))
    if "num_train_epochs" in hf_later:
        train.iterations = _epochs_to_iterations(hf_later["num_train_epochs"], train, prompts, parsed, LM_ALGORITHMS)
    needs_reward = any(LM_ALGORITHMS[n].needs_reward(c) for n, c, _ in parsed)
    reward = raw.get("reward")
    if reward is None and needs_reward:
        raise InputError("reward: online algorithms need a reward ({kind: function, name: ...} or {kind: model, ...})")
    reward = _check_reward(reward, "reward", base) if reward is not None else {}
    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_memory("seeds", f"{seeds:.3g} runs", seeds * ROW_BYTES * train.iterations)  # before the list is built
        seeds = list(range(positive_int("seeds", seeds)))
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise InputError(f"seeds must be a positive count or a list of non-negative integers (got {seeds!r})")
    reference = raw.get("reference", "auto")
    if reference not in ("auto", "adapter", "copy"):
        raise InputError(f"reference must be auto, adapter or copy (got {reference!r})")
    if reference == "adapter" and lora is None:
        raise InputError("reference: adapter needs a lora block")
    return LMSpec(name, source, raw, model, lora, prompts, eval_prompts, reward, parsed, seeds, train, acc, reference)


def load_lm_spec(path: str | Path, world: int | None = None, overrides=()) -> LMSpec:
    """An LM spec file, with ``key=value`` overrides applied (:mod:`testbed.experiments.overrides`)."""
    from testbed.experiments.overrides import apply_overrides

    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec {str(path)!r} does not exist")
    return parse_lm_spec(apply_overrides(read_yaml(path, "spec"), overrides, TOP_KEYS), str(path), world)


def _demonstrations_config(cls, a: dict, where: str, raw: dict):
    """``dataset: preferences`` for a method that trains on single responses read from a data set (SFT: it
    draws no prompts, one sequence per item): the pipeline's demonstrations, the oracle-chosen response of
    each labelled pair. Its config, or None when the method is not of that kind (then the pairs apply)."""
    try:
        probe = build_config(cls.Config, {**a, "dataset": ""}, where, "lm")
    except InputError:
        return None
    if cls.needs_prompts(probe) or cls.sequences_per_item(probe) != 1:
        return None
    if not (isinstance(raw.get("reward"), dict) and raw["reward"].get("kind") == "bradley_terry"):
        raise InputError(f"{where}.dataset: 'preferences' (the pipeline's oracle-chosen demonstrations) needs a reward "
                         "of kind bradley_terry")
    return dataclasses.replace(probe, dataset=PREFERENCES)
