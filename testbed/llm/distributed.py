"""Distributed training set-up from the spec: DeepSpeed or FSDP through ``accelerate``, and what a multi-process
checkpoint must add (each process's RNG state).

A spec (or pipeline stage) names a DeepSpeed JSON file (``accelerate.deepspeed``, a stage's ``deepspeed``) or an FSDP
block (``accelerate.fsdp``: keyword arguments of accelerate's ``FullyShardedDataParallelPlugin``). The real run
builds its ``Accelerator`` with the plugin, not a plain one: ``torchrun`` or ``accelerate launch`` then gives ZeRO /
FSDP, not DDP alone. DeepSpeed's ``"auto"`` fields, which accelerate fills only from a prepared dataloader (the runs
here have none), are resolved from the spec (:func:`resolve_deepspeed`):

- ``train_micro_batch_size_per_gpu``: items per micro-batch on one process (LM runs: minibatch / (processes ×
  grad_accum); SFT / reward-model stages: ``per_device_batch``);
- ``gradient_accumulation_steps``: the spec's ``grad_accum``; ``train_batch_size``: micro × grad_accum × processes;
- ``gradient_clipping``: the spec's ``max_grad_norm`` (0: off); ``bf16.enabled`` / ``fp16.enabled``: whether the
  spec's ``mixed_precision`` is that one.

A number given in the file that contradicts the spec is an input error naming both; an ``"auto"`` left anywhere
else is refused (DeepSpeed's parser would compare a string with a number).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from testbed.errors import InputError

_STATE: dict = {"key": None, "acc": None}


def read_deepspeed(path: str, where: str) -> dict:
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        raise InputError(f"{where}: {str(path)!r} is not a readable JSON file") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: {str(path)!r} must hold a JSON object (a DeepSpeed config)")
    return cfg


def deepspeed_settings(cfg: dict, where: str) -> tuple[int, bool]:
    """(ZeRO stage, 16-bit) of a DeepSpeed config read by :func:`read_deepspeed`, its blocks checked."""
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise InputError(f"{where}: zero_optimization must be a JSON object (got {zero!r})")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise InputError(f"{where}: zero_optimization.stage must be 0, 1, 2 or 3 (got {stage!r})")
    for k in ("bf16", "fp16"):
        if not isinstance(cfg.get(k) or {}, dict):
            raise InputError(f"{where}: {k} must be a JSON object such as {{\"enabled\": \"auto\"}} (got {cfg[k]!r})")
    return int(stage), any((cfg.get(k) or {}).get("enabled") in (True, "auto") for k in ("bf16", "fp16"))


def resolve_deepspeed(cfg: dict, *, micro: int, grad_accum: int, world: int, mixed_precision: str = "no",
                      max_grad_norm: float = 0.0, where: str = "deepspeed") -> dict:
    """The DeepSpeed config with every ``auto`` the spec determines filled in (see the module docstring)."""
    out = copy.deepcopy(cfg)
    want = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": grad_accum,
            "train_batch_size": micro * grad_accum * world, "gradient_clipping": float(max_grad_norm)}
    for k, v in want.items():
        given = out.get(k, "auto")
        if given == "auto":
            out[k] = v
        elif k == "gradient_clipping":
            out[k] = float(given)  # the file's clipping wins (DeepSpeed clips inside its step)
        elif given != v:
            raise InputError(f"{where}.{k} = {given!r} contradicts the spec, which gives {v} (set it to \"auto\")")
    for k in ("bf16", "fp16"):
        block = out.get(k)
        if isinstance(block, dict) and block.get("enabled") == "auto":
            block["enabled"] = mixed_precision == k
    left = _autos(out)
    if left:
        raise InputError(f"{where}.{left[0]} is \"auto\", which the spec cannot fill; give a value")
    return out


def _autos(d, prefix: str = "") -> list[str]:
    found = []
    for k, v in d.items():
        if v == "auto":
            found.append(prefix + k)
        elif isinstance(v, dict):
            found += _autos(v, f"{prefix}{k}.")
    return found


def check_fsdp(entry, where: str = "accelerate.fsdp") -> dict:
    """An FSDP block: keyword arguments of accelerate's FullyShardedDataParallelPlugin (names checked here)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping of FullyShardedDataParallelPlugin arguments (got {entry!r})")
    names = {f.name for f in dataclasses.fields(FullyShardedDataParallelPlugin)}
    bad = sorted(set(entry) - names)
    if bad:
        raise InputError(f"{where}: unknown key(s) {bad}; expected FullyShardedDataParallelPlugin arguments, e.g. "
                         "sharding_strategy, auto_wrap_policy, cpu_ram_efficient_loading")
    return entry


def plugins(deepspeed: dict | None, fsdp: dict | None) -> dict:
    """The Accelerator keyword arguments of a resolved DeepSpeed config or an FSDP block (none: {})."""
    if deepspeed and fsdp:
        raise InputError("accelerate: give deepspeed or fsdp, not both")
    if deepspeed:
        from accelerate.utils import DeepSpeedPlugin
        return {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=deepspeed)}
    if fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin
        return {"fsdp_plugin": FullyShardedDataParallelPlugin(**fsdp)}
    return {}


def accelerator(grad_accum: int, mixed_precision: str = "no", deepspeed: dict | None = None, fsdp: dict | None = None):
    """The process's Accelerator for these settings. accelerate keeps one global state: a stage with other settings
    (a pipeline's next stage) resets it, keeping the process group."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    key = json.dumps([mixed_precision, deepspeed, fsdp], sort_keys=True, default=str)
    if _STATE["acc"] is not None and _STATE["key"] == key:
        _STATE["acc"].gradient_accumulation_steps = grad_accum
        return _STATE["acc"]
    if _STATE["acc"] is not None:
        _STATE["acc"].free_memory()
        AcceleratorState._reset_state(reset_partial_state=False)
    _STATE["acc"] = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=grad_accum,
                                mixed_precision=mixed_precision, **plugins(deepspeed, fsdp))
    _STATE["key"] = key
    return _STATE["acc"]


def world_size() -> int:
    import os
    return int(os.environ.get("WORLD_SIZE", 0)) or 1


def lm_accelerator(spec):
    """The Accelerator of an LM spec: its mixed precision, and its DeepSpeed config (``auto`` fields resolved from the
    spec) or FSDP block."""
    a, tr = spec.accelerate, spec.train
    ds = None
    if getattr(a, "deepspeed", None):
        W = world_size()
        grads = {getattr(c, "grad_accum", 0) or tr.grad_accum for _, c, _ in spec.algorithms}  # as LMBackend.grad_accum
        if grads != {tr.grad_accum}:
            raise InputError("accelerate.deepspeed: DeepSpeed accumulates gradients itself over one fixed number of "
                             "micro-batches; give every algorithm train.grad_accum (no algorithm-level grad_accum)")
        M = getattr(spec.algorithms[0][1], "minibatch", 0) or tr.minibatch
        ds = resolve_deepspeed(read_deepspeed(a.deepspeed, "accelerate.deepspeed"), micro=max(1, M // (W * tr.grad_accum)),
                               grad_accum=tr.grad_accum, world=W, mixed_precision=a.mixed_precision,
                               max_grad_norm=tr.max_grad_norm, where="accelerate.deepspeed")
    fsdp = check_fsdp(a.fsdp) if getattr(a, "fsdp", None) else None
    return accelerator(tr.grad_accum, a.mixed_precision, ds, fsdp)


# -- multi-process checkpoints: every process's torch RNG (sharded rollouts sample one stream per process) --
def gather_rng(acc) -> list:
    """Every process's torch CPU RNG state (and CUDA's, when there is one), gathered on all processes."""
    mine = rng_state()
    if acc.num_processes == 1:
        return [mine]
    import torch.distributed as dist
    out = [None] * acc.num_processes
    dist.all_gather_object(out, mine)
    return out


def restore_rng(states: list, acc) -> None:
    """Put back this process's RNG state from :func:`gather_rng`'s list (the same number of processes)."""
    if len(states) != acc.num_processes:
        raise InputError(f"--resume: the checkpoint was written by {len(states)} process(es), this run has "
                         f"{acc.num_processes}; resume with the same number")
    set_rng_state(states[acc.process_index])


def rng_state() -> dict:
    """The torch CPU RNG state, and CUDA's when there is one (one process's, or one shard's: testbed.llm.shards)."""
    return {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def set_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
