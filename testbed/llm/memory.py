"""The dry run's memory model: bytes per process of what an LM run holds.

Per model held (policy, frozen reference copy, critic, reward model, judge) the weights in the dtype it is loaded in
(the reward model and critic load in float32 unless their entry sets ``dtype``; a LoRA adapter is float32, peft's
``autocast_adapter_dtype``). For the trainable parameters:

- without DeepSpeed, torch AdamW: gradients and two moments in the trainable parameters' dtype;
- with DeepSpeed (bf16/fp16 enabled): the trainable weights in 16 bits, 16-bit gradients, a float32 master copy and
  two float32 moments; ZeRO stage >= 1 shards master and moments over the processes, >= 2 also the gradients, 3
  also the 16-bit weights (Rajbhandari et al. 2020, §5).

Activations of one training micro-batch (b sequences of s tokens) per transformer layer follow Korthikanti et al.
2022 (eq. 1): s·b·h·34 bytes at 16 bits (17 values per token and hidden unit, scaled by the activation dtype), plus
5·a·s²·b bytes for the attention scores of an eager attention (none with a fused SDPA kernel). Their 17 values are
8 for the attention and layer norms, one for the MLP's input and dropout masks, and 8 = 2·I/h for an MLP of
I = 4h with a fused activation (its input and output); :func:`layer_values` replaces the MLP term from the config:
2·I/h for a fused activation, 5·I/h for GPT-2's ``gelu_new`` (written in Python ops: autograd keeps three more of
its intermediates), 4·I/h for a gated MLP (Llama, Qwen2: gate, its activation, up, their product).

The LM head's logits are float32 over the n positions the loss reads (the run's ``logits_to_keep``: the response
tokens + 1; every position for the SFT loss): the log-softmax's input is saved (1×) and the backward pass of
logsumexp and gather makes three more of its size while every layer's activations are still held: 4·b·n·V·4 bytes.
With a small vocabulary the larger transient is a layer's own backward pass: the gradients of its intermediates,
about a third of what the layer saves (measured on CPU). With gradient checkpointing each layer keeps only its input
(s·b·h values); the logits' backward pass comes before any layer is recomputed, so the peak is the inputs plus the
larger of the logits' 4·b·n·V·4 bytes and one recomputed layer with its backward pass (4/3 of the layer).
Generation holds the KV cache, 2·layers·b·s·h values. Checked against measured CPU peaks of GPT-2 / Pythia
(GPT-NeoX) / Qwen2 configs by ``tests/test_llm_memory_model.py``. Everything is an estimate of tensors held,
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
                     checkpointing: bool = False, eager_attention: bool = False, response: int | None = None,
                     values: float = 17.0) -> float:
    """Activations held at the peak of one micro-batch's backward pass (Korthikanti et al. 2022, eq. 1, with
    ``values`` per token and hidden unit per layer, see :func:`layer_values`; and the float32 logits of the
    ``response + 1`` positions the loss reads, every position when ``response`` is None)."""
    scale = DTYPE_BYTES[dtype] / 2
    per_layer = (seq * batch * hidden * values * DTYPE_BYTES[dtype]
                 + (5 * heads * seq * seq * batch * scale if eager_attention else 0))
    logits = 4 * batch * (seq if response is None else response + 1) * vocab * 4
    backward = per_layer / 3  # the gradients of one layer's intermediates while its backward pass runs
    if checkpointing:
        return layers * seq * batch * hidden * DTYPE_BYTES[dtype] + max(per_layer + backward, logits)
    return layers * per_layer + max(backward, logits)


def kv_cache_bytes(hidden: int, layers: int, batch: int, seq: int, dtype: str) -> float:
    return 2 * layers * batch * seq * hidden * DTYPE_BYTES[dtype]


def config_sizes(cfg) -> tuple[int, int, int, int]:
    """(hidden, layers, heads, vocab) of a transformers config (GPT-NeoX, GPT-2, Llama names)."""
    get = lambda *names: next(getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None)  # noqa: E731
    return (get("hidden_size", "n_embd"), get("num_hidden_layers", "n_layer"), get("num_attention_heads", "n_head"),
            cfg.vocab_size)



GATED = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo", "olmo2")  # act(gate(x)) · up(x)


def layer_values(cfg) -> float:
    """Values per token and hidden unit one decoder layer saves for the backward pass: 9 (attention, layer norms,
    MLP input) + the MLP's tensors of the intermediate size I (see the module's docstring)."""
    h = config_sizes(cfg)[0]
    inter = next((getattr(cfg, n) for n in ("intermediate_size", "n_inner") if getattr(cfg, n, None)), None) or 4 * h
    act = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None)
    per = 4 if cfg.model_type in GATED else 5 if act == "gelu_new" else 2
    return 9 + per * inter / h
