"""The one-GPU check (issue 18, item 4): run as a script, not collected by pytest.

    python tests/gpu/check.py [--device cuda] [--out gpu_check]     # full: Pythia-1.4B config, < 8 min on one H200
    python tests/gpu/check.py --device cpu --tiny                     # seconds; tests/test_gpu_check.py runs it

(a) **Numerics on a tiny model** (2-layer GPT-2, random weights): per-token log-probs and one REBEL update (the
paper-form loss of ``testbed.losses.rebel_loss``, one SGD step) in float64 on the CPU (the reference), float32 on
the CPU, float32 on the device and bf16 autocast on the device. Checked: device fp32 vs CPU fp32 and CPU fp32 vs
float64 within ``FP32_ATOL`` = 1e-5 (log-probs, loss, updated log-probs); bf16 vs fp32 within
``BF16_LOGPROB_ATOL`` (:mod:`testbed.llm.precision`); the loss equals its closed form computed here from the
log-probs; the SGD step lowers the loss by lr·|g|² to first order (|ΔL + lr·|g|²| <= 0.1·lr·|g|²).

(b) **One step of REBEL, PPO, online DPO and RLOO** through the testbed's own build/update path
(:func:`testbed.llm.train.build`) on a Pythia-1.4B config (random weights from ``GPTNeoXConfig``, no download)
in bf16 with LoRA r = 1024 (alpha 2048, ``query_key_value``), 53 new tokens, 512-token prompts and the paper's
per-device batch (8 prompts x 8 accumulation steps = 64 prompts, minibatch 64, 4 epochs for REBEL/PPO). The
reward is a Python function (no reward model: the REBEL/PPO ratio compares the policy-side work; the dry run
counts the reward model's memory). Per algorithm: one warm-up step, then one timed step (seconds), the
generation throughput of one ``generate`` call on the batch (tokens/s), the peak GPU memory (CPU: peak resident
set above the baseline); then the REBEL/PPO memory and time ratios. ``--tiny`` swaps the 1.4B config for the
tiny model (LoRA r = 8, 6 new tokens, 8 prompts) so the same path runs in seconds on a CPU.

Writes ``<out>/check.json`` and ``<out>/check.md``; exits 1 if a check of (a) fails or a number of (b) is not
finite and positive.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

FP32_ATOL = 1e-5
ALGOS = {"rebel": {"name": "rebel", "eta": 1.0, "epochs": 4}, "ppo": {"name": "ppo", "epochs": 4},
         "dpo": {"name": "dpo", "mode": "online", "beta": 0.05}, "rloo": {"name": "rloo", "k": 2}}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def numerics(device: str) -> dict:
    """Part (a): log-probs and one REBEL update at float64/CPU, float32/CPU, float32/device, bf16/device."""
    from testbed.llm.policy import LMPolicy
    from testbed.llm.precision import BF16_LOGPROB_ATOL, autocast
    from testbed.llm.toy import tiny_causal_lm, toy_tokenizer
    from testbed.losses import rebel_loss

    tok = toy_tokenizer()
    g = torch.Generator().manual_seed(0)
    B, Q, L, lr, eta = 8, 6, 5, 1e-5, 1.0
    q = torch.randint(3, tok.vocab_size, (2 * B, Q), generator=g)
    qm = torch.ones_like(q)
    qm[::3, :2] = 0  # some left padding
    y = torch.randint(3, tok.vocab_size, (2 * B, L), generator=g)
    reward = torch.rand(2 * B, generator=g, dtype=torch.float64)
    base = tiny_causal_lm("gpt2", seed=0, hidden=32, layers=2, heads=2)

    def run(dtype, dev, bf16=False):
        model = __import__("copy").deepcopy(base).to(dtype=dtype, device=dev)
        pol = LMPolicy(model, tok, temperature=0.7, max_new_tokens=L, ref=None)
        args = [t.to(dev) for t in (q, qm, y)]
        with autocast(dev, "bf16" if bf16 else "no"):
            lp, mask = pol.logprobs(*args)
        lp0 = lp.detach()
        seq = lp.sum(1)
        ratio = seq - seq.detach()  # ln pi_theta - ln pi_t at theta = theta_t (value 0, gradient of ln pi_theta)
        r = reward.to(dev, dtype=seq.dtype)
        loss = rebel_loss(ratio[:B], ratio[B:], r[:B], r[B:], eta)
        model.zero_grad()
        loss.backward()
        gnorm2 = sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
            with autocast(dev, "bf16" if bf16 else "no"):
                lp1 = pol.logprobs(*args)[0]
        s1 = lp1.sum(1).double() - seq.detach().double()
        loss1 = float(rebel_loss(s1[:B], s1[B:], reward[:B].to(dev), reward[B:].to(dev), eta))
        return {"lp": lp0.double().cpu(), "lp1": lp1.double().cpu(), "loss": float(loss.detach()), "loss1": loss1,
                "gnorm2": gnorm2}

    ref = run(torch.float64, "cpu")
    cpu32 = run(torch.float32, "cpu")
    dev32 = run(torch.float32, device)
    dev16 = run(torch.float32, device, bf16=True)
    gap = lambda a, b, k: float((a[k] - b[k]).abs().max())  # noqa: E731
    closed = float(((reward[:B] - reward[B:]) ** 2).mean())  # the loss at theta_t: Δ logratio = 0
    checks = {
        "fp32_cpu_vs_float64_logprobs": (gap(cpu32, ref, "lp"), FP32_ATOL),
        "fp32_device_vs_cpu_logprobs": (gap(dev32, cpu32, "lp"), FP32_ATOL),
        "fp32_device_vs_cpu_loss": (abs(dev32["loss"] - cpu32["loss"]), FP32_ATOL),
        "fp32_device_vs_cpu_updated_logprobs": (gap(dev32, cpu32, "lp1"), FP32_ATOL),
        "fp32_cpu_vs_float64_updated_logprobs": (gap(cpu32, ref, "lp1"), FP32_ATOL),
        "bf16_device_vs_fp32_logprobs": (gap(dev16, dev32, "lp"), BF16_LOGPROB_ATOL),
        "loss_vs_closed_form": (abs(ref["loss"] - closed), 1e-12),
        # first-order decrease: L(theta - lr g) = L - lr |g|^2 + O(lr^2)
        "sgd_step_decrease_vs_lr_g2": (abs(ref["loss1"] - ref["loss"] + lr * ref["gnorm2"]), 0.1 * lr * ref["gnorm2"]),
    }
    ok = all(v <= tol for v, tol in checks.values()) and ref["loss1"] < ref["loss"]
    return {"ok": ok, "checks": {k: {"value": v, "tolerance": tol, "ok": v <= tol} for k, (v, tol) in checks.items()},
            "loss": ref["loss"], "loss_after_step": ref["loss1"]}


def step_spec(algo: dict, tiny: bool) -> dict:
    if tiny:
        model = {"name": "tiny:gpt2", "hidden": 32, "layers": 2, "heads": 2}
        lora = {"r": 8, "alpha": 16, "target_modules": ["c_attn"]}
        batch, accum, tokens, words = 8, 2, 6, (4, 8)
    else:  # the REBEL paper's Pythia-1.4B TL;DR settings, one process's share (experiments/llm/tldr_pythia_1.4b)
        model = {"name": "EleutherAI/pythia-1.4b-deduped", "random_init": True, "dtype": "bfloat16"}
        lora = {"r": 1024, "alpha": 2048, "dropout": 0.0, "target_modules": ["query_key_value"]}
        batch, accum, tokens, words = 64, 8, 53, (512, 512)
    return {"name": "gpu_check", "model": model, "lora": lora,
            "prompts": {"kind": "toy", "count": batch, "min_len": words[0], "max_len": words[1]},
            "reward": {"kind": "function", "name": "count_token", "token": "good"}, "algorithms": [algo],
            "train": {"iterations": 2, "batch": batch, "minibatch": batch, "grad_accum": accum, "lr": 3e-6,
                      "max_new_tokens": tokens, "max_prompt_length": 512, "temperature": 0.7,
                      "missing_eos_penalty": None, "save": False}}


def one_step(name: str, tiny: bool, device: str) -> dict:
    """Part (b) for one algorithm: warm-up step, timed step, one timed ``generate``, peak memory."""
    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.task import make_prompts, peak_memory_mb, reset_peak_memory
    from testbed.llm.train import build, get_accelerator

    spec = parse_lm_spec(step_spec(ALGOS[name], tiny))
    algo_name, cfg, _ = spec.algorithms[0]
    base = reset_peak_memory()
    ctx, alg = build(spec, algo_name, cfg, 0)
    q, qm = ctx.policy.encode(make_prompts(spec.prompts), spec.train.max_prompt_length)
    alg.lm_update(q, qm)  # warm-up (kernels, allocator)
    _sync(device)
    t0 = time.perf_counter()
    alg.lm_update(q, qm)
    _sync(device)
    step = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = ctx.policy.generate(q, qm)
    _sync(device)
    gen = time.perf_counter() - t0
    tokens = int((y != ctx.policy.pad_id).sum())
    peak = peak_memory_mb(base)
    params = sum(p.numel() for p in ctx.policy.model.parameters())
    trainable = sum(p.numel() for p in ctx.params)
    del ctx, alg, q, qm, y
    acc = get_accelerator(spec)
    acc.free_memory()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"algorithm": name, "seconds_per_step": step, "generation_tokens": tokens,
            "generation_tokens_per_s": tokens / gen, "peak_memory_mb": peak, "parameters": params,
            "trainable_parameters": trainable, "prompts": spec.train.batch, "new_tokens": spec.train.max_new_tokens}


def markdown(res: dict) -> str:
    a = res["numerics"]
    lines = [f"GPU check, {res['date']}, device {res['device_name']} ({res['mode']})", "",
             "| numerics check | value | tolerance | ok |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['value']:.3g} | {v['tolerance']:.3g} | {'yes' if v['ok'] else 'NO'} |"
              for k, v in a["checks"].items()]
    lines += ["", "| algorithm | s / step | generation tokens/s | peak memory MB | x REBEL time | x REBEL memory |",
              "|---|---|---|---|---|---|"]
    r = res["steps"]["rebel"]
    for k, s in res["steps"].items():
        lines.append(f"| {k} | {s['seconds_per_step']:.3g} | {s['generation_tokens_per_s']:.4g} | "
                     f"{s['peak_memory_mb']:.0f} | {s['seconds_per_step'] / r['seconds_per_step']:.2f} | "
                     f"{s['peak_memory_mb'] / r['peak_memory_mb'] if r['peak_memory_mb'] > 0 else float('nan'):.2f} |")
    mem = res["ratios"]["rebel_ppo_memory"]
    lines += ["", f"REBEL / PPO: time {res['ratios']['rebel_ppo_time']:.2f}, memory {'-' if mem is None else f'{mem:.2f}'}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny model for (b) too: seconds on a CPU")
    ap.add_argument("--out", default="gpu_check", help="folder for check.json and check.md")
    ap.add_argument("--algorithms", default=",".join(ALGOS), help="comma-separated subset of " + ",".join(ALGOS))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("check.py: --device cuda but torch sees no GPU (pass --device cpu --tiny on a CPU)", file=sys.stderr)
        return 2
    algos = args.algorithms.split(",")
    bad = sorted(set(algos) - set(ALGOS)) + ([] if "rebel" in algos and "ppo" in algos else ["(rebel and ppo needed)"])
    if bad:
        print(f"check.py: --algorithms: unknown or missing {bad}; expected a subset of {list(ALGOS)}", file=sys.stderr)
        return 2
    from testbed.errors import env_threads
    from testbed.io import atomic_write_text

    torch.set_num_threads(env_threads() or torch.get_num_threads())  # as an LM run sets them (its own process)
    t0 = time.perf_counter()
    res = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "mode": "tiny" if args.tiny else "pythia-1.4b",
           "device": args.device, "torch": torch.__version__,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    res["numerics"] = numerics(args.device)
    res["steps"] = {a: one_step(a, args.tiny, args.device) for a in algos}
    r, p = res["steps"]["rebel"], res["steps"]["ppo"]
    # (a CPU's resident-set peak above the baseline may be 0 for a run that reuses freed memory: no memory ratio then)
    res["ratios"] = {"rebel_ppo_time": r["seconds_per_step"] / p["seconds_per_step"],
                     "rebel_ppo_memory": r["peak_memory_mb"] / p["peak_memory_mb"] if p["peak_memory_mb"] > 0 else None}
    times = [s[k] for s in res["steps"].values() for k in ("seconds_per_step", "generation_tokens_per_s")]
    res["steps_ok"] = (all(math.isfinite(v) and v > 0 for v in times)
                       and all(math.isfinite(s["peak_memory_mb"]) and s["peak_memory_mb"] >= 0 for s in res["steps"].values())
                       and (args.device == "cpu" or res["ratios"]["rebel_ppo_memory"] is not None))
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "check.json", json.dumps(res, indent=2) + "\n")
    atomic_write_text(out / "check.md", markdown(res))
    print(markdown(res))
    return 0 if res["numerics"]["ok"] and res["steps_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
