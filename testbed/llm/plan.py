"""The dry-run plan of an LM spec: models held per algorithm, parameter counts and a memory estimate.

Parameter counts are exact: each model is instantiated from its config on torch's ``meta`` device
(no weights, no download). Memory per process is :mod:`testbed.llm.memory`'s model of what the run
holds: every model's weights in the dtype it is loaded in (the reward model in float32, LoRA adapters
in float32), gradients and AdamW states of the trainable parameters (sharded by the DeepSpeed ZeRO
stage of ``accelerate.deepspeed``), and the larger of one training micro-batch's activations and the
rollout's KV cache.
"""

from __future__ import annotations

from testbed.algorithms import ALGORITHMS
from testbed.llm.distributed import deepspeed_settings, read_deepspeed
from testbed.llm.memory import GIB, Held, activation_bytes, config_sizes, kv_cache_bytes, layer_values, state_bytes
from testbed.llm.models import TINY, count_parameters, lora_parameters, model_config, reward_model_entry
from testbed.llm.spec import LMSpec


def deepspeed(spec: LMSpec) -> tuple[int, bool]:
    """(ZeRO stage, 16-bit) of the spec's accelerate.deepspeed config ((0, False): none)."""
    a = spec.accelerate.deepspeed
    return deepspeed_settings(read_deepspeed(a, "accelerate.deepspeed"), "accelerate.deepspeed") if a else (0, False)


def plan(spec: LMSpec, checkpointing: bool = False) -> dict:
    """Models held, parameters and estimated memory per process for each algorithm of the spec (activations with
    gradient checkpointing when ``checkpointing`` or the spec's ``model.gradient_checkpointing``)."""
    checkpointing = checkpointing or bool(spec.model.get("gradient_checkpointing"))
    dtype = spec.model.get("dtype", "float32")
    P = count_parameters(spec.model, "causal")
    lora = spec.lora
    trainable = lora_parameters(spec.model, lora["r"], lora.get("target_modules")) if lora else P
    tdtype = "float32" if lora else dtype
    rm = spec.reward
    R = count_parameters(reward_model_entry(rm), "score") if rm.get("kind") == "model" else 0
    critic_full = count_parameters(spec.model, "score")  # backbone + a one-output head
    ref_copy = spec.reference == "copy" or (spec.reference == "auto" and not lora)
    N, (Z, ds16) = spec.accelerate.num_processes, deepspeed(spec)
    mcfg = model_config(spec.model)
    h, L, a, V = config_sizes(mcfg)
    kw = {"values": layer_values(mcfg), "eager_attention": spec.model.get("name") in TINY}  # tiny models: eager
    act_dtype = "bfloat16" if spec.accelerate.mixed_precision == "bf16" or ds16 else dtype
    tr = spec.train
    seq = tr.max_prompt_length + tr.max_new_tokens
    out = {"spec": spec.name, "processes": N, "zero_stage": Z, "policy_parameters": P,
           "trainable_policy_parameters": trainable, "reward_model_parameters": R, "algorithms": []}
    for name, cfg, _ in spec.algorithms:
        cls = ALGORITHMS[name]
        held = [Held("policy", P + (trainable if lora else 0), trainable, dtype, tdtype)]  # LoRA weights are extra
        if ref_copy and cls.uses_reference(cfg):
            held.append(Held("reference (frozen copy)", P, 0, dtype))
        critic = cls.needs_critic(cfg)
        if critic:
            held.append(Held("critic", critic_full + (trainable if lora else 0), trainable if lora else critic_full,
                             dtype, tdtype))
        online = cls.needs_reward(cfg)
        if online and rm.get("kind") == "bradley_terry":  # its size is the installed embedder's, not counted here
            held.append(Held("reward model (frozen MiniLM embedder + Bradley–Terry head, not counted)", 0))
        elif online and R:
            held.append(Held("reward model", R, 0, rm.get("dtype", "float32")))
        elif online:
            held.append(Held("reward function (no model)", 0))
        st = state_bytes(held, Z, N, ds16)
        M, G = cfg.minibatch or tr.minibatch, cfg.grad_accum or tr.grad_accum
        K = tr.shards  # one process running K shards: K x G micro-batches of M / (N·K·G) items per step
        micro = max(1, M // (N * K * G)) * cls.sequences_per_item(cfg)
        act = activation_bytes(h, L, a, V, micro, seq, act_dtype, checkpointing, response=tr.max_new_tokens, **kw)
        if critic:  # the critic's backbone holds as much again, without logits
            act += activation_bytes(h, L, a, 0, micro, seq, act_dtype, checkpointing, **kw)
        rollout = tr.batch // (N * K) * cls.generated_per_prompt(cfg) if cls.needs_prompts(cfg) else 0  # a shard's
        kv = kv_cache_bytes(h, L, rollout, seq, dtype)
        total = st["weights"] + st["grads"] + st["optimizer"] + max(act, kv)
        out["algorithms"].append({"name": name, "models": [{"model": m.name, "parameters": m.parameters,
                                                             "trainable": m.trainable, "dtype": m.dtype} for m in held],
                                  "weights_gib": st["weights"] / GIB, "grads_gib": st["grads"] / GIB,
                                  "optimizer_gib": st["optimizer"] / GIB,
                                  "grads_and_adamw_gib": (st["grads"] + st["optimizer"]) / GIB,
                                  "activations_gib": act / GIB, "micro_batch_sequences": micro,
                                  "kv_cache_gib": kv / GIB, "rollout_sequences": rollout, "total_gib": total / GIB})
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
        lines.append(f"      memory per process: weights {a['weights_gib']:.1f} GiB + grads {a['grads_gib']:.1f} GiB + AdamW "
                     f"{a['optimizer_gib']:.1f} GiB + max(activations {a['activations_gib']:.1f} GiB for "
                     f"{a['micro_batch_sequences']} sequences, KV cache {a['kv_cache_gib']:.1f} GiB for "
                     f"{a['rollout_sequences']}) = {a['total_gib']:.1f} GiB ({fit} in {spec.accelerate.gpu_memory_gb:g} GB)")
    lines.append("dry run: nothing downloaded, nothing trained")
    return "\n".join(lines)
