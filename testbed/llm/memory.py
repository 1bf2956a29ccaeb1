"""The dry run's memory model: bytes per process of what an LM run holds.

Per model held (policy, frozen reference copy, critic, reward model, judge) the weights in the dtype it is loaded in
(the reward model and critic load in float32 unless their entry sets ``dtype``; a LoRA adapter is float32, peft's
``autocast_adapter_dtype``). For the trainable parameters:

- without DeepSpeed, torch AdamW: gradients and two moments in the trainable parameters' dtype;
- with DeepSpeed (bf16/fp16 enabled): the trainable weights in 16 bits, 16-bit gradients, a float32 master copy and
  two float32 moments; ZeRO stage >= 1 shards master and moments over the processes, >= 2 also the gradients, 3
  also the 16-bit weights (Rajbhandari et al. 2020, §5).

Activations of one training micro-batch (b sequences of s tokens) per transformer layer follow Korthikanti et al.
2022 (eq. 1): s·b·h·34 bytes at 16 bits (scaled by the activation dtype), plus 5·a·s²·b bytes for the attention
scores of an eager attention (none with a fused SDPA kernel); with gradient checkpointing each layer keeps only its
input (s·b·h values) and one layer is recomputed at a time. The LM head's float32 logits and their log-softmax add
2·b·s·V·4 bytes. Generation holds the KV cache, 2·layers·b·s·h values. Everything is an estimate of tensors held,
not of allocator fragmentation or CUDA context (~0.5 GiB per GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
GIB = 2**30


@dataclass
class Held:
    """One model a process holds: its parameter count, how many of them train, their dtypes."""
    name: str
    parameters: int
    trainable: int = 0
    dtype: str = "float32"
    trainable_dtype: str = "float32"  # LoRA adapters: float32; a full fine-tune: the model's dtype


def state_bytes(held: list[Held], zero_stage: int = 0, processes: int = 1, deepspeed_16bit: bool = False) -> dict:
    """Weights and training state (gradients, optimiser) per process, in bytes."""
    weights = grads = optim = 0.0
    for m in held:
        frozen = m.parameters - m.trainable
        weights += frozen * DTYPE_BYTES[m.dtype]
        t = m.trainable
        if not t:
            continue
        if deepspeed_16bit:
            weights += t * 2 / (processes if zero_stage >= 3 else 1)
            grads += t * 2 / (processes if zero_stage >= 2 else 1)
            optim += t * (4 + 8) / (processes if zero_stage >= 1 else 1)
        else:
            b = DTYPE_BYTES[m.trainable_dtype]
            weights += t * b
            grads += t * b / (processes if zero_stage >= 2 else 1)
            optim += t * 2 * b / (processes if zero_stage >= 1 else 1)
    return {"weights": weights, "grads": grads, "optimizer": optim}


def activation_bytes(hidden: int, layers: int, heads: int, vocab: int, batch: int, seq: int, dtype: str = "float32",
                     checkpointing: bool = False, eager_attention: bool = False) -> float:
    """Activations saved for the backward pass of one micro-batch (Korthikanti et al. 2022, eq. 1)."""
    scale = DTYPE_BYTES[dtype] / 2
    per_layer = seq * batch * hidden * 34 * scale + (5 * heads * seq * seq * batch * scale if eager_attention else 0)
    logits = 2 * batch * seq * vocab * 4
    if checkpointing:
        return layers * seq * batch * hidden * DTYPE_BYTES[dtype] + per_layer + logits
    return layers * per_layer + logits


def kv_cache_bytes(hidden: int, layers: int, batch: int, seq: int, dtype: str) -> float:
    return 2 * layers * batch * seq * hidden * DTYPE_BYTES[dtype]


def config_sizes(cfg) -> tuple[int, int, int, int]:
    """(hidden, layers, heads, vocab) of a transformers config (GPT-NeoX, GPT-2, Llama names)."""
    get = lambda *names: next(getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None)  # noqa: E731
    return (get("hidden_size", "n_embd"), get("num_hidden_layers", "n_layer"), get("num_attention_heads", "n_head"),
            cfg.vocab_size)
