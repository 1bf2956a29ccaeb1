"""Seconds per iteration and peak memory of REBEL, PPO, DPO and RLOO on one >=100M-parameter LM.

    python tests/benchmarks/llm_memory.py [--iters 2] [--batch 8] [--tokens 16]

Each (algorithm, full fine-tune | LoRA) runs in its own process: build GPT-2 small (124M
parameters, random weights from its config, no download), one warm-up iteration, then ``--iters``
timed iterations. Peak memory is above the process's baseline after imports: on a GPU
``torch.cuda.max_memory_allocated`` (the baseline is 0 allocated); on CPU the peak resident set
(``ru_maxrss``) minus the resident set after imports. Same model, prompts and batch for all
algorithms: REBEL 2 samples per prompt, 4 epochs; PPO 1 sample, 4 epochs, critic on its own
backbone; RLOO k = 2, 1 epoch; DPO offline on (prompt, chosen, rejected) rows, 1 epoch.
The reward is a Python function (no reward model), so the models held differ only by PPO's critic
and, for full fine-tunes, the frozen reference copy.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ALGOS = {"rebel": {"name": "rebel"}, "ppo": {"name": "ppo"}, "dpo": {"name": "dpo", "mode": "offline"},
         "rloo": {"name": "rloo", "k": 2}}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def one(algo: str, mode: str, iters: int, batch: int, tokens: int) -> dict:
    import torch

    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.toy import toy_prompts
    from testbed.llm.train import build
    base = rss_mb()
    cuda = torch.cuda.is_available()
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "pairs.jsonl")
    with open(data, "w") as f:
        for p in toy_prompts(64, seed=3):
            f.write(json.dumps({"prompt": p, "chosen": "good good sun", "rejected": "bad dog moon"}) + "\n")
    a = dict(ALGOS[algo])
    if algo == "dpo":
        a["dataset"] = data
    raw = {"name": "bench", "model": {"name": "gpt2", "random_init": True},
           "prompts": {"kind": "toy", "count": 64}, "reward": {"kind": "function", "name": "count_token"},
           "algorithms": [a], "train": {"iterations": iters + 1, "batch": batch, "minibatch": batch,
                                        "max_new_tokens": tokens, "lr": 1e-5, "missing_eos_penalty": None}}
    if mode == "lora":
        raw["lora"] = {"r": 16, "alpha": 32}
    spec = parse_lm_spec(raw)
    name, cfg, _ = spec.algorithms[0]
    ctx, alg = build(spec, name, cfg, 0)
    params = sum(p.numel() for p in ctx.policy.model.parameters())
    prompts = toy_prompts(batch, seed=0)
    times = []
    for i in range(iters + 1):
        q, qm = ctx.policy.encode(prompts)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        alg.lm_update(q, qm)
        if cuda:
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"algo": algo, "mode": mode, "s_per_iter": sum(times) / len(times), "peak_mb": peak, "params": params,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.iters, args.batch, args.tokens)))
        return 0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"GPT-2 small from config, batch {args.batch} prompts, {args.tokens} new tokens, {args.iters} timed iterations")
    for mode in ("full", "lora"):
        res = {}
        for algo in ALGOS:
            out = subprocess.run([sys.executable, __file__, "--one", algo, mode, "--iters", str(args.iters), "--batch",
                                  str(args.batch), "--tokens", str(args.tokens)], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:])
                return 1
            res[algo] = json.loads(out.stdout.strip().splitlines()[-1])
        r = res["rebel"]
        print(f"\n{mode} fine-tune ({r['params'] / 1e6:.1f}M parameters in the policy, device {r['device']})")
        print(f"{'algorithm':<10}{'s/iter':>9}{'x REBEL':>9}{'peak MB':>10}{'x REBEL':>9}")
        for algo, x in res.items():
            print(f"{algo:<10}{x['s_per_iter']:>9.2f}{x['s_per_iter'] / r['s_per_iter']:>9.2f}{x['peak_mb']:>10.0f}"
                  f"{x['peak_mb'] / r['peak_mb']:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
