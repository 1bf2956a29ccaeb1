"""Measured peak memory of one LM configuration on CPU, next to the dry run's estimate (:mod:`testbed.llm.memory`).

    python tests/llm_memory_probe.py '{"arch": "gpt_neox", "hidden": 128, "layers": 4, ...}'   # one JSON line out
    python tests/llm_memory_probe.py --table       # the README table: tests/test_llm_memory_model.py's configurations

:func:`probe` starts one subprocess that imports torch and transformers once and forks a fresh process for each
configuration (two at a time), so each peak is that process's own. The process first runs the same code on a
one-layer copy (lazy imports, the code pages of the same kernels: not counted), then builds
a model from a config (``gpt2`` | ``gpt_neox`` (Pythia) | ``qwen2``, random weights, float32, no download),
optionally LoRA (peft, float32 adapters) and gradient checkpointing (the run's
:func:`testbed.llm.checkpointing.enable_gradient_checkpointing`), then runs what the run's update runs: two
optimiser steps of ``grad_accum`` micro-batches of ``batch`` sequences (``prompt`` tokens + ``new`` response tokens)
through the run's own log-probability code (:func:`testbed.llm.policy.forward_logits`,
:func:`~testbed.llm.policy.token_logprobs` at temperature 0.7, the pad token suppressed), backward, torch AdamW,
``zero_grad``. ``"run": true`` instead builds the spec's whole run (:func:`testbed.llm.train.build`: policy,
reference, reward function) and runs two REBEL updates (generation, old and reference log-probs, 1 epoch), and the
estimate is :func:`testbed.llm.plan.plan`'s total for that spec.

The measure is the resident set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
resident set just before the model is built, with glibc told to serve every allocation of 64 KiB or more by
``mmap`` and to give it back at ``free`` (``MALLOC_MMAP_THRESHOLD_=65536``, ``MALLOC_TRIM_THRESHOLD_=0``, set in the
subprocess's environment before it starts). torch's CPU allocator caches nothing, so then the resident set follows
the tensors alive, as ``torch.cuda.max_memory_allocated`` does on a GPU, rather than what the heap keeps after a
free (glibc's default threshold rises to 32 MiB and freed blocks below it stay resident): this is what the estimate
claims to count (tensors held, not allocator fragmentation). It also counts the few MB of Python objects, autograd graph and small
allocations that the model ignores, which weigh most in the smallest configurations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
PAD, EOS = 0, 1
TEMPERATURE = 0.7


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


_TINY = {"hidden": 16, "heads": 2, "layers": 1, "vocab": 64, "batch": 1, "prompt": 4, "new": 4}


def _tiny_spec(raw: dict) -> dict:
    return {**raw, "model": {**raw["model"], "hidden": 16, "layers": 1, "heads": 2},
            "train": {**raw["train"], "batch": 2, "minibatch": 2, "max_new_tokens": 4}}


def _reset_peak() -> int:
    """Collect garbage, reset the high-water mark to the resident set now (``clear_refs`` 5) and return it."""
    import gc
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def config(c: dict):
    """A transformers config of ``c['arch']`` with ``hidden``, ``layers``, ``heads``, ``vocab`` (MLP 4·hidden)."""
    from transformers import GPT2Config, GPTNeoXConfig, Qwen2Config

    h, L, a, V = c["hidden"], c["layers"], c["heads"], c["vocab"]
    ids = dict(pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2, vocab_size=V)
    n = c["prompt"] + c["new"] + 1
    if c["arch"] == "gpt2":
        return GPT2Config(n_embd=h, n_layer=L, n_head=a, n_positions=n, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          **ids)
    if c["arch"] == "gpt_neox":
        return GPTNeoXConfig(hidden_size=h, num_hidden_layers=L, num_attention_heads=a, intermediate_size=4 * h,
                             max_position_embeddings=n, attention_dropout=0.0, hidden_dropout=0.0, **ids)
    return Qwen2Config(hidden_size=h, num_hidden_layers=L, num_attention_heads=a, num_key_value_heads=a,
                       intermediate_size=4 * h, max_position_embeddings=n, tie_word_embeddings=False, **ids)


def estimate(c: dict, parameters: int, trainable: int) -> dict:
    """The dry run's model for this configuration: weights, gradients and AdamW of the trainable parameters, the
    activations of one micro-batch (float32 throughout)."""
    from testbed.llm.memory import Held, activation_bytes, layer_values, state_bytes

    lora = bool(c.get("lora"))
    st = state_bytes([Held("policy", parameters, trainable, "float32", "float32")])
    act = activation_bytes(c["hidden"], c["layers"], c["heads"], c["vocab"], c["batch"], c["prompt"] + c["new"],
                           "float32", c.get("checkpointing", False), c.get("attn") == "eager", response=c["new"],
                           values=layer_values(config(c)))
    return {"weights": st["weights"], "grads": st["grads"], "optimizer": st["optimizer"], "activations": act,
            "total": sum(st.values()) + act, "lora": lora}


def _step(c: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from testbed.llm.checkpointing import enable_gradient_checkpointing
    from testbed.llm.policy import apply_lora, forward_logits, token_logprobs

    if not c.get("warm"):  # the same code once on a one-layer, one-sequence copy first (lazy imports, the code
        _step({**c, "layers": 1, "batch": 1, "warm": 1})  # pages of the same kernels), not counted
    torch.manual_seed(0)
    cfg = config(c)
    base = _reset_peak()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=c.get("attn", "sdpa")).eval()
    if c.get("checkpointing"):
        enable_gradient_checkpointing(model)
    if c.get("lora"):
        model = apply_lora(model, r=c["lora"], alpha=2 * c["lora"], target_modules=c.get("target_modules"))
    params = [p for p in model.parameters() if p.requires_grad]
    total, trainable = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    b, P, L = c["batch"], c["prompt"], c["new"]
    for _ in range(2):
        for _ in range(c.get("grad_accum", 1)):
            q = torch.randint(3, c["vocab"], (b, P), generator=g)
            r = torch.randint(3, c["vocab"], (b, L), generator=g)
            qm, rm = torch.ones_like(q), torch.ones_like(r)
            lp = token_logprobs(forward_logits(model, q, qm, r, rm), r, TEMPERATURE, suppress=PAD, mask=rm)
            loss = lp.sum(1).square().mean() * 1e-6
            loss.backward()
            del lp, loss
        opt.step()
        opt.zero_grad()
    return {"peak": _status("VmHWM") - base, "parameters": total, "trainable": trainable}


def _run(c: dict) -> dict:
    """The whole run of an LM spec: build, two REBEL updates; the estimate is the dry-run plan's total."""
    import torch

    from testbed.llm.plan import plan
    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.toy import toy_prompts
    from testbed.llm.train import build

    if not c.get("warm"):  # the same code once on a one-layer, two-prompt copy first, not counted
        raw = c["spec"]
        _run({"warm": 1, "spec": {**raw, "model": {**raw["model"], "layers": 1},
                                  "train": {**raw["train"], "batch": 2, "minibatch": 2}}})
    spec = parse_lm_spec(c["spec"])
    est = plan(spec)["algorithms"][0]
    name, cfg, _ = spec.algorithms[0]
    torch.manual_seed(0)
    prompts = [toy_prompts(spec.train.batch, seed=i) for i in range(2)]
    base = _reset_peak()
    ctx, alg = build(spec, name, cfg, 0)
    for p in prompts:
        alg.lm_update(*ctx.policy.encode(p, spec.train.max_prompt_length))
    return {"peak": _status("VmHWM") - base, "estimate": est["total_gib"] * 2**30,
            "activations": est["activations_gib"] * 2**30, "kv_cache": est["kv_cache_gib"] * 2**30}


def child(c: dict) -> dict:
    """One configuration, in a process of its own: the warm-up on a tiny copy, then the measured part."""
    return _run(c) if c.get("run") else {**(out := _step(c)), "estimate": estimate(c, out["parameters"], out["trainable"])}


def _many(configs: list[dict], workers: int = 2) -> list[dict]:
    """Every configuration in a process forked for it alone (the imports are paid once, in this process)."""
    import multiprocessing

    import torch
    torch.set_num_threads(1)
    for c in configs:  # lazy imports of every code path, once, before the forks
        child({**c, **({"spec": _tiny_spec(c["spec"])} if c.get("run") else _TINY), "warm": 1})
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        return pool.map(child, configs, chunksize=1)


def probe(configs: list[dict], timeout: float = 600) -> list[dict]:
    """Measured peak and estimate (bytes) of each configuration, each in a fresh process (forked from one
    subprocess that imports torch and transformers once); a list of results in the order given."""
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, "--many"], input=json.dumps(configs), capture_output=True,
                         text=True, env=env, timeout=timeout, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"memory probe failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(res: dict) -> float:
    e = res["estimate"]
    return (e["total"] if isinstance(e, dict) else e) / res["peak"]


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_llm_memory_model import CONFIGS, RUNS
        print("| configuration | estimate MB | measured MB | est / measured |\n|---|---:|---:|---:|")
        items = {**CONFIGS, **RUNS}
        for label, r in zip(items, probe(list(items.values()))):
            e = r["estimate"]["total"] if isinstance(r["estimate"], dict) else r["estimate"]
            print(f"| {label} | {e / 1e6:.1f} | {r['peak'] / 1e6:.1f} | {ratio(r):.2f} |", flush=True)
    elif sys.argv[1:] == ["--many"]:
        print(json.dumps(_many(json.loads(sys.stdin.read()))))
    else:  # one configuration, through probe(): its own process, the allocator settings in its environment
        print(json.dumps(probe([json.loads(sys.argv[1])])[0]))
