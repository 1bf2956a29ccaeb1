"""The dry run's memory model (:mod:`testbed.llm.memory`) against measured peaks on CPU.

Each configuration runs in a fresh process (``tests/llm_memory_probe.py``: a model from a config, random weights,
float32, the run's log-probability code, backward, AdamW; or a whole REBEL run built as ``testbed llm run`` builds
it); the measure is the resident set's high-water mark above the resident set before the model is built, with glibc
returning every freed block of 64 KiB or more (the probe's docstring says why that is the CPU's
``max_memory_allocated``). Bands, estimate / measured: the training step [0.9, 1.25], the whole run [0.85, 1.25]
(the estimate may over-count: it adds every gradient to the activations' peak, where with one micro-batch per step
most gradients are allocated after the logits' backward pass; it may under-count the Python objects and autograd
graph, a few MB). The second half checks that the estimate is the closed form of what a GPU user sets: dtype,
LoRA, ZeRO stage and processes, checkpointing, batch and tokens.
"""

import pytest

pytest.importorskip("transformers")

from llm_memory_probe import probe, ratio  # noqa: E402

from testbed.llm.memory import Held, activation_bytes, layer_values, state_bytes  # noqa: E402

STEP = dict(arch="gpt_neox", hidden=128, layers=4, heads=4, vocab=8192, batch=4, prompt=96, new=32)
CONFIGS = {
    "Pythia (GPT-NeoX) 4 layers, full fine-tune": STEP,
    "GPT-NeoX 12 layers, gradient checkpointing": {**STEP, "layers": 12, "checkpointing": True},
    "GPT-NeoX 4 layers, 2 micro-batches per step": {**STEP, "grad_accum": 2},
    "GPT-NeoX 4 layers, LoRA r=16": {**STEP, "lora": 16},
    "GPT-2 4 layers, eager attention": {**STEP, "arch": "gpt2", "attn": "eager"},
    "Qwen2 4 layers (gated MLP), full fine-tune": {**STEP, "arch": "qwen2"},
    "Qwen2 4 layers, LoRA r=16 + checkpointing": {**STEP, "arch": "qwen2", "lora": 16, "checkpointing": True},
}
"""The training step: batch 4 x (96 prompt + 32 response tokens), hidden 128, 4 heads, vocabulary 8192."""


def _spec(model: dict | None = None, **extra) -> dict:
    raw = {"name": "probe", "model": {"name": "tiny:gpt2", "hidden": 128, "layers": 4, "heads": 4, **(model or {})},
           "prompts": {"kind": "toy", "count": 64}, "reward": {"kind": "function", "name": "count_token"},
           "algorithms": [{"name": "rebel", "epochs": 1}],
           "train": {"iterations": 2, "batch": 16, "minibatch": 16, "max_new_tokens": 48, "max_prompt_length": 4,
                     "lr": 1e-5, "missing_eos_penalty": None}}
    return {**raw, **extra}


RUNS = {
    "REBEL run (tiny GPT-2, 16 prompts x 2 x 52 tokens), full fine-tune": {"run": True, "spec": _spec()},
    "REBEL run, LoRA r=16 + checkpointing": {"run": True, "spec": _spec({"gradient_checkpointing": True},
                                                                         lora={"r": 16, "alpha": 32})},
}
"""Whole runs: ``build`` + two REBEL updates (generation, old and reference log-probs, one epoch), against the plan."""


@pytest.fixture(scope="module")
def measured() -> dict:
    items = {**CONFIGS, **RUNS}
    return dict(zip(items, probe(list(items.values()))))


@pytest.mark.slow
@pytest.mark.parametrize("label", list(CONFIGS))
def test_the_training_step_estimate_is_within_the_band(measured, label):
    r = measured[label]
    assert 0.9 <= ratio(r) <= 1.25, (label, r["estimate"]["total"] / 1e6, r["peak"] / 1e6)


@pytest.mark.slow
@pytest.mark.parametrize("label", list(RUNS))
def test_the_whole_run_estimate_is_within_the_band(measured, label):
    r = measured[label]
    assert 0.85 <= ratio(r) <= 1.25, (label, r["estimate"] / 1e6, r["peak"] / 1e6)


@pytest.mark.slow
def test_checkpointing_and_lora_lower_both_the_estimate_and_the_peak(measured):
    full, low = measured[list(RUNS)[0]], measured[list(RUNS)[1]]
    assert low["peak"] < 0.6 * full["peak"] and low["estimate"] < 0.6 * full["estimate"]


@pytest.mark.slow
def test_gradients_held_through_a_second_micro_batch_raise_the_peak_toward_the_estimate(measured):
    """With one micro-batch per step most gradients are allocated after the activations' peak (the estimate adds
    them: it over-counts); with two, the first micro-batch's gradients are held through the second's forward."""
    one, two = measured["Pythia (GPT-NeoX) 4 layers, full fine-tune"], measured["GPT-NeoX 4 layers, 2 micro-batches per step"]
    assert one["estimate"] == two["estimate"]
    assert two["peak"] > one["peak"] + 0.5 * one["estimate"]["grads"] and ratio(two) < ratio(one)


# -- the estimate as a function of the settings --

H, L, A, V, B, S, N = 2048, 24, 16, 50304, 8, 565, 53  # Pythia 1.4b, the TL;DR micro-batch


def test_weights_grads_and_adamw_follow_dtype_lora_and_zero_stage():
    P, T = 1_414_647_808, 100_663_296
    frozen = state_bytes([Held("policy", P, 0, "bfloat16")])
    assert frozen == {"weights": 2 * P, "grads": 0, "optimizer": 0}
    lora = state_bytes([Held("policy", P + T, T, "bfloat16", "float32")])  # LoRA weights are float32
    assert lora == {"weights": 2 * P + 4 * T, "grads": 4 * T, "optimizer": 8 * T}
    full = state_bytes([Held("policy", P, P, "float32", "float32")], zero_stage=2, processes=8)
    assert full == {"weights": 4 * P, "grads": 4 * P / 8, "optimizer": 8 * P / 8}
    for stage, shard in ((0, (1, 1, 1)), (1, (1, 1, 8)), (2, (1, 8, 8)), (3, (8, 8, 8))):  # DeepSpeed 16-bit
        got = state_bytes([Held("policy", P, P, "bfloat16", "bfloat16")], stage, 8, deepspeed_16bit=True)
        assert got == {"weights": 2 * P / shard[0], "grads": 2 * P / shard[1], "optimizer": 12 * P / shard[2]}, stage


def test_activations_follow_batch_tokens_dtype_and_checkpointing():
    v = 17.0
    layer = S * B * H * v * 2  # bfloat16
    logits = 4 * B * (N + 1) * V * 4
    assert logits > layer / 3  # the logits' backward pass is the larger transient
    assert activation_bytes(H, L, A, V, B, S, "bfloat16", response=N) == L * layer + logits
    assert activation_bytes(H, L, A, V, 2 * B, S, "bfloat16", response=N) == 2 * (L * layer + logits)
    assert activation_bytes(H, L, A, V, B, S, "float32", response=N) == 2 * L * layer + logits  # logits: float32
    assert activation_bytes(H, L, A, V, B, S, "bfloat16", response=2 * N + 1) == L * layer + 2 * logits
    assert activation_bytes(H, L, A, 0, B, S, "bfloat16") == pytest.approx(L * layer + layer / 3, rel=1e-15)
    ck = activation_bytes(H, L, A, V, B, S, "bfloat16", checkpointing=True, response=N)
    # the layer inputs, then the larger of the logits and one recomputed layer with its backward pass
    assert ck == pytest.approx(L * S * B * H * 2 + max(4 * layer / 3, logits), rel=1e-15)
    eager = activation_bytes(H, L, A, V, B, S, "bfloat16", eager_attention=True, response=N)
    assert eager - L * layer - logits == L * 5 * A * S * S * B  # Korthikanti's attention scores at 16 bits


def test_layer_values_from_the_config():
    from transformers import GPT2Config, GPTNeoXConfig, Qwen2Config
    assert layer_values(GPTNeoXConfig(hidden_size=2048, intermediate_size=8192)) == 17  # Korthikanti's 34 bytes/2
    assert layer_values(GPT2Config(n_embd=768)) == 9 + 5 * 4  # gelu_new: three more intermediates of 4h
    assert layer_values(Qwen2Config(hidden_size=896, intermediate_size=4864)) == pytest.approx(9 + 4 * 4864 / 896)


def test_the_plan_of_the_paper_spec_moves_with_checkpointing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pathlib import Path

    from testbed.llm.pipeline import load_pipeline
    from testbed.llm.plan import plan

    spec = load_pipeline(Path(__file__).resolve().parents[1] / "experiments" / "llm" / "tldr_pythia_1.4b")[
        "stages"]["rebel"]["lm_spec"]
    a, c = plan(spec)["algorithms"][0], plan(spec, checkpointing=True)["algorithms"][0]
    micro, seq = a["micro_batch_sequences"], spec.train.max_prompt_length + spec.train.max_new_tokens
    layer = seq * micro * H * 17 * 2
    logits = 4 * micro * (spec.train.max_new_tokens + 1) * V * 4
    assert a["activations_gib"] * 2**30 == pytest.approx(L * layer + max(layer / 3, logits), rel=1e-12)
    assert c["activations_gib"] * 2**30 == pytest.approx(L * seq * micro * H * 2 + max(4 * layer / 3, logits),
                                                         rel=1e-12)
    for p in (a, c):
        assert p["total_gib"] == pytest.approx(p["weights_gib"] + p["grads_gib"] + p["optimizer_gib"]
                                               + max(p["activations_gib"], p["kv_cache_gib"]), rel=1e-12)


@pytest.mark.parametrize("algorithm, per_prompt", [
    ({"name": "rebel", "eta": 1.0}, 2), ({"name": "rebel", "eta": 1.0, "y_prime": "ref"}, 1),
    ({"name": "dpo", "mode": "online", "beta": 0.1}, 2), ({"name": "rloo", "k": 3}, 3), ({"name": "ppo"}, 1),
], ids=["rebel", "rebel-yprime-ref", "dpo-online", "rloo-k3", "ppo"])
def test_the_plans_rollout_is_the_algorithms_largest_generate_call(tmp_path, monkeypatch, algorithm, per_prompt):
    """The KV cache is sized for the sequences one generate call samples: REBEL and online DPO draw both
    responses of a batch of B prompts in one call (2B), RLOO k·B (the plan counted B for REBEL/DPO)."""
    from llm_helpers import toy_spec

    from testbed.llm.backend import LMBackend
    from testbed.llm.plan import plan
    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.train import run_lm_spec

    spec = parse_lm_spec(toy_spec(algorithm, iterations=1, batch=8, minibatch=8, eval_every=1))
    calls, real = [], LMBackend.sample
    monkeypatch.setattr(LMBackend, "sample", lambda self, q, qm, ref=False: calls.append(len(q)) or real(self, q, qm, ref))
    run_lm_spec(spec, tmp_path / "out", progress=False)
    assert max(calls) == 8 * per_prompt
    assert plan(spec)["algorithms"][0]["rollout_sequences"] == max(calls)
