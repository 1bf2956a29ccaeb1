"""The dry-run plan of an LM spec: models held per algorithm, parameter counts and a memory estimate.

Parameter counts are exact: each model is instantiated from its config on torch's ``meta`` device
(no weights, no download). Memory per process = weights of every model held + for the trainable
parameters their gradients and AdamW's two fp32 moments (8 bytes each); with DeepSpeed ZeRO-2 the
gradients and optimiser states are sharded over the processes. Activations and the generation KV
cache are not included (they depend on batch and sequence length), so the estimate is a floor.
"""

from __future__ import annotations

import json
from pathlib import Path

from testbed.algorithms import ALGORITHMS
from testbed.llm.models import count_parameters, lora_parameters
from testbed.llm.spec import LMSpec

GIB = 2**30


def _bytes_per(entry: dict) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[entry.get("dtype", "float32")]


def zero_stage(spec: LMSpec) -> int:
    if not spec.accelerate.deepspeed:
        return 0
    cfg = json.loads(Path(spec.accelerate.deepspeed).read_text())
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def plan(spec: LMSpec) -> dict:
    """Models held, parameters and estimated memory per process for each algorithm of the spec."""
    b = _bytes_per(spec.model)
    P = count_parameters(spec.model, "causal")
    lora = spec.lora
    trainable = lora_parameters(spec.model, lora["r"], lora.get("target_modules")) if lora else P
    rm = spec.reward
    R = count_parameters({k: rm[k] for k in ("name", "path", "hidden", "layers", "heads") if k in rm}, "score") \
        if rm.get("kind") == "model" else 0
    critic_full = count_parameters(spec.model, "score")  # backbone + a one-output head
    ref_copy = spec.reference == "copy" or (spec.reference == "auto" and not lora)
    N = spec.accelerate.num_processes
    shard = N if zero_stage(spec) >= 2 else 1
    out = {"spec": spec.name, "processes": N, "zero_stage": zero_stage(spec), "policy_parameters": P,
           "trainable_policy_parameters": trainable, "reward_model_parameters": R, "algorithms": []}
    for name, cfg, _ in spec.algorithms:
        cls = ALGORITHMS[name]
        held = [("policy", P + (trainable if lora else 0), trainable)]  # LoRA weights are extra
        if ref_copy and cls.uses_reference(cfg):
            held.append(("reference (frozen copy)", P, 0))
        if cls.needs_critic(cfg):
            held.append(("critic", critic_full + (trainable if lora else 0), trainable if lora else critic_full))
        online = cls.needs_reward(cfg)
        if online and rm.get("kind") == "bradley_terry":  # its size is the installed embedder's, not counted here
            held.append(("reward model (frozen MiniLM embedder + Bradley–Terry head, not counted)", 0, 0))
        elif online and R:
            held.append(("reward model", R, 0))
        elif online:
            held.append(("reward function (no model)", 0, 0))
        weights = sum(p for _, p, _ in held) * b
        train_state = sum(t for _, _, t in held) * (b + 8) / shard
        out["algorithms"].append({"name": name, "models": [{"model": m, "parameters": p, "trainable": t} for m, p, t in held],
                                  "weights_gib": weights / GIB, "grads_and_adamw_gib": train_state / GIB,
                                  "total_gib": (weights + train_state) / GIB})
    return out


def plan_text(spec: LMSpec) -> str:
    p = plan(spec)
    lines = [f"spec {p['spec']}: {len(spec.algorithms)} algorithm(s) x {len(spec.seeds)} seed(s), "
             f"{p['processes']} process(es)" + (f", DeepSpeed ZeRO-{p['zero_stage']}" if p["zero_stage"] else ""),
             f"policy {spec.model.get('path') or spec.model.get('name')}: {p['policy_parameters']:,} parameters"
             + (f", LoRA r={spec.lora['r']}: {p['trainable_policy_parameters']:,} trainable" if spec.lora else
                ", full fine-tune"),
             f"reward: {spec.reward.get('path') or spec.reward.get('name') or '-'} ({spec.reward.get('kind', 'none')}"
             + (f", {p['reward_model_parameters']:,} parameters)" if p["reward_model_parameters"] else ")"),
             f"train: {spec.train.iterations} iterations x batch {spec.train.batch}, minibatch {spec.train.minibatch}, "
             f"grad_accum {spec.train.grad_accum}, lr {spec.train.lr:g}, temperature {spec.train.temperature:g}, "
             f"{spec.train.max_new_tokens} new tokens",
             f"optimiser: AdamW eps {spec.train.adam_eps:g}, weight_decay {spec.train.weight_decay:g}, max_grad_norm "
             f"{spec.train.max_grad_norm:g}" + (" (clipping off)" if not spec.train.max_grad_norm else ""),
             f"missing EOS: penalty {spec.train.missing_eos_penalty}, mode {spec.train.missing_eos_mode}, "
             f"test {spec.train.missing_eos_test}"
             + (f"; LoRA target_modules {spec.lora.get('target_modules') or 'all-linear'}" if spec.lora else "")]
    for a in p["algorithms"]:
        models = ", ".join(f"{m['model']} ({m['parameters'] / 1e6:,.1f}M" + (f", {m['trainable'] / 1e6:,.1f}M trainable)"
                                                                             if m["trainable"] else ")") for m in a["models"])
        fit = "fits" if a["total_gib"] <= spec.accelerate.gpu_memory_gb * 1e9 / GIB else "does NOT fit"
        lines.append(f"  {a['name']}: models held: {models}")
        lines.append(f"      memory per process: weights {a['weights_gib']:.1f} GiB + grads/AdamW {a['grads_and_adamw_gib']:.1f} "
                     f"GiB = {a['total_gib']:.1f} GiB before activations ({fit} in {spec.accelerate.gpu_memory_gb:g} GB)")
    lines.append("dry run: nothing downloaded, nothing trained")
    return "\n".join(lines)
