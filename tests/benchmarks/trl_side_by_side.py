"""Side by side with TRL: seconds per step and peak memory of our REBEL, DPO and RLOO against TRL 1.16's
RLOOTrainer and DPOTrainer, TRL 1.12's PPOTrainer, and a plain-PyTorch floor, on one workload.

    python tests/benchmarks/trl_side_by_side.py --trl116 PY --trl112 PY [--iters 2]
    tox -e trl116,trl112,trl-bench          # builds the two TRL envs, then runs this script

Workload (the same for every row): a Qwen2 config of 120M parameters (hidden 768, 12 layers, 12
heads, MLP 3072, vocabulary 4096, untied embeddings; random weights, seeded, saved once with
``save_pretrained``) and a word-level tokenizer whose words are single tokens, so 8 prompts of exactly
16 tokens; 32 new tokens, temperature 1; full fine-tune with AdamW, lr 1e-6; KL coefficient 0.05
where the method has one. Online methods: 2 responses per prompt (REBEL's pair, RLOO's k = 2), one
optimiser step per batch of 16 responses; the reward is a Python function (share of the token ``w7``
in the response) for ours and TRL RLOO; TRL PPO needs a reward *model*, a 2-layer one of 32 hidden
units (negligible memory), and a value model the size of the policy (PPO's critic). DPO: 8
(prompt, chosen, rejected) rows of 16 + 32 + 32 tokens per step.

Each row runs in its own process (ours with this interpreter, TRL with the interpreters of its two
environments). Seconds per step: the mean over ``--iters`` steps after one warm-up step (TRL: time
between consecutive ``on_step_end`` callbacks; ours: around ``algorithm.update``; PPO: one update =
a rollout plus ``num_ppo_epochs`` = 4 passes). Peak memory: the child's peak resident set
(``ru_maxrss``) minus its resident set after imports, before any model is loaded -- the same for every
row, so models held, optimiser state and activations all count. The floor is plain PyTorch on the
same model: one ``generate`` of 16 x 32 tokens, two no-grad forwards (pi_t and pi_ref log-probs) and
one forward + backward + AdamW step over 16 x 48 tokens -- REBEL's work with 1 epoch; the floor compared
against counts one no-grad forward (pi_ref), since our one-epoch REBEL takes pi_t from the step's own forward.
``rebel_mb8`` is the same REBEL step accumulated over 2 micro-batches of 4 pairs (8 sequences per backward, as
TRL PPO's micro-batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
B, PROMPT, NEW, LR, BETA, VOCAB = 8, 16, 32, 1e-6, 0.05, 4096
WORDS = [f"w{i}" for i in range(VOCAB - 3)]  # ids 3..4095; [PAD]=0, [EOS]=1, [BOS]=2
OURS = ("rebel", "rebel_mb8", "rebel4", "rloo", "dpo", "floor")
TRL116 = ("trl_rloo", "trl_dpo")
TRL112 = ("trl_ppo",)
from llm_memory import rss_mb  # noqa: E402  (stdlib only: the TRL children's venvs lack the testbed)


def peak_mb(base: float) -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


# ----- the shared workload, written once by the parent ---------------------------------------------
def build_workload(folder: Path, seed: int = 0, tiny: bool = False) -> None:
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast, Qwen2Config

    vocab = {w: i for i, w in enumerate(["[PAD]", "[EOS]", "[BOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[PAD]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", eos_token="[EOS]", bos_token="[BOS]",
                                  unk_token="[PAD]")
    tok.padding_side = "left"
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, vocab_size=VOCAB)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2) \
        if tiny else dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          num_key_value_heads=12)
    cfg = Qwen2Config(**size, max_position_embeddings=256, tie_word_embeddings=False, **ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "tokenizer")  # its own folder: beside a config.json AutoTokenizer would pick Qwen2's class
    rm_cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=256, num_labels=1, **ids)
    AutoModelForSequenceClassification.from_config(rm_cfg).save_pretrained(folder / "reward_model")
    rng = np.random.default_rng(seed)
    text = [" ".join(rng.choice(WORDS, size=PROMPT)) for _ in range(B)]
    resp = [" ".join(rng.choice(WORDS, size=NEW - 1)) for _ in range(2 * B)]  # + EOS = 32 tokens
    with open(folder / "prompts.jsonl", "w") as f:
        for p in text:
            f.write(json.dumps({"prompt": p}) + "\n")
    with open(folder / "pairs.jsonl", "w") as f:
        for i, p in enumerate(text):
            f.write(json.dumps({"prompt": p, "chosen": resp[2 * i], "rejected": resp[2 * i + 1]}) + "\n")
    assert all(len(tok(p)["input_ids"]) == PROMPT for p in text)
    n = sum(p.numel() for p in model.parameters())
    (folder / "params.txt").write_text(str(n))


def count_w7(texts: list[str]) -> list[float]:
    return [t.split().count("w7") / NEW for t in texts]


# ----- ours ----------------------------------------------------------------------------------------
def run_ours(system: str, folder: Path, iters: int) -> dict:
    import torch

    base = rss_mb()
    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.train import build
    algo = {"rebel": {"name": "rebel", "epochs": 1, "beta": BETA}, "rebel4": {"name": "rebel", "epochs": 4, "beta": BETA},
            # the same optimiser step accumulated over 2 micro-batches of 4 pairs: 8 sequences per backward, as TRL
            # PPO's micro-batch of 8 responses (per_device_train_batch_size = 8)
            "rebel_mb8": {"name": "rebel", "epochs": 1, "beta": BETA, "grad_accum": 2},
            "rloo": {"name": "rloo", "k": 2, "beta": BETA, "epochs": 1},
            "dpo": {"name": "dpo", "mode": "offline", "dataset": str(folder / "pairs.jsonl"), "beta": 0.1}}[system]
    minibatch = 2 * B if system == "rloo" else B  # 16 responses per optimiser step (8 pairs / 8 rows)
    raw = {"name": "side_by_side", "model": {"path": str(folder / "model"), "tokenizer": str(folder / "tokenizer")},
           "prompts": {"file": str(folder / "prompts.jsonl")},
           "reward": {"kind": "function", "name": "count_token", "token": "w7"},
           "algorithms": [algo], "train": {"iterations": iters + 1, "batch": B, "minibatch": minibatch, "lr": LR,
                                           "max_new_tokens": NEW, "temperature": 1.0, "missing_eos_penalty": None,
                                           "lr_schedule": "constant", "save": False}}
    spec = parse_lm_spec(raw)
    name, cfg, _ = spec.algorithms[0]
    ctx, alg = build(spec, name, cfg, 0)
    q, qm = ctx.policy.encode([json.loads(x)["prompt"] for x in open(folder / "prompts.jsonl")])
    times = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        alg.update(q, qm)
        if i:
            times.append(time.perf_counter() - t0)
    return {"s_per_step": sum(times) / len(times), "peak_mb": peak_mb(base), "torch_threads": torch.get_num_threads()}


def run_floor(folder: Path, iters: int) -> dict:
    """Plain PyTorch: the work of one REBEL step (1 epoch), timed piece by piece."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = rss_mb()
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(folder / "model").eval()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # as ours and TRL (adamw_torch_fused)
    prompts = [json.loads(x)["prompt"] for x in open(folder / "prompts.jsonl")] * 2
    enc = tok(prompts, return_tensors="pt")
    parts = {"generate": [], "forward_nograd": [], "forward_backward_adamw": []}
    torch.manual_seed(0)
    for i in range(iters + 1):
        t0 = time.perf_counter()
        out = model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=NEW, min_new_tokens=NEW,
                             pad_token_id=0, eos_token_id=1)
        t1 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=out)
        t2 = time.perf_counter()
        logits = model(input_ids=out).logits[:, PROMPT - 1:-1].float()
        lp = torch.gather(logits.log_softmax(-1), 2, out[:, PROMPT:, None]).sum()
        lp.backward()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        if i:
            parts["generate"].append(t1 - t0)
            parts["forward_nograd"].append(t2 - t1)
            parts["forward_backward_adamw"].append(t3 - t2)
    mean = {k: sum(v) / len(v) for k, v in parts.items()}
    # the work our one-epoch REBEL step does: its pi_t log-probs come from the step's own forward, so one
    # no-grad forward (pi_ref); "s_per_step_two_forwards" is REBEL as written (pi_t and pi_ref passes)
    step = mean["generate"] + mean["forward_nograd"] + mean["forward_backward_adamw"]
    return {"s_per_step": step, "s_per_step_two_forwards": step + mean["forward_nograd"], "peak_mb": peak_mb(base), **mean}


# ----- TRL -----------------------------------------------------------------------------------------
def _timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    return StepTimer()


def _common(out: str) -> dict:
    return dict(output_dir=out, learning_rate=LR, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                report_to="none", save_strategy="no", logging_steps=1000, seed=0, lr_scheduler_type="constant",
                dataloader_num_workers=0)


def run_trl(system: str, folder: Path, iters: int) -> dict:
    import torch
    base = rss_mb()
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    tok.padding_side = "left"
    prompts = [json.loads(x)["prompt"] for x in open(folder / "prompts.jsonl")]
    timer, out = _timer(), tempfile.mkdtemp()
    steps = iters + 1
    if system == "trl_rloo":
        def reward(prompts, completions, **kw):
            return count_w7(completions)
        args = trl.RLOOConfig(**_common(out), per_device_train_batch_size=2 * B, num_generations=2, max_completion_length=NEW,
                              num_iterations=1, beta=BETA, temperature=1.0, max_steps=steps, steps_per_generation=1)
        trainer = trl.RLOOTrainer(model=str(folder / "model"), reward_funcs=reward, args=args,
                                  train_dataset=datasets.Dataset.from_dict({"prompt": prompts * 8 * steps}),
                                  processing_class=tok, callbacks=[timer])
    elif system == "trl_dpo":
        rows = [json.loads(x) for x in open(folder / "pairs.jsonl")]
        args = trl.DPOConfig(**_common(out), per_device_train_batch_size=B, beta=0.1, max_length=PROMPT + NEW, max_steps=steps)
        data = datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows] * steps)
        trainer = trl.DPOTrainer(model=str(folder / "model"), args=args, train_dataset=data, processing_class=tok,
                                 callbacks=[timer])
    else:  # trl_ppo, TRL 1.12
        from trl.experimental.ppo import PPOConfig, PPOTrainer
        policy = AutoModelForCausalLM.from_pretrained(folder / "model")
        ref = AutoModelForCausalLM.from_pretrained(folder / "model")
        value = AutoModelForSequenceClassification.from_pretrained(folder / "model", num_labels=1)
        rm = AutoModelForSequenceClassification.from_pretrained(folder / "reward_model", num_labels=1)
        data = datasets.Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts] * steps})
        args = PPOConfig(**_common(out), per_device_train_batch_size=B, gradient_accumulation_steps=1, num_mini_batches=1,
                         num_ppo_epochs=4, response_length=NEW, total_episodes=B * steps, local_rollout_forward_batch_size=B,
                         kl_coef=BETA, temperature=1.0, num_sample_generations=0, stop_token="eos", missing_eos_penalty=None)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                             train_dataset=data, value_model=value, callbacks=[timer])
    trainer.train()
    ends = timer.ends
    if len(ends) < 2:
        raise RuntimeError(f"{system}: {len(ends)} steps timed (need >= 2)")
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    return {"s_per_step": sum(gaps) / len(gaps), "peak_mb": peak_mb(base), "trl": trl.__version__,
            "torch_threads": torch.get_num_threads(), "steps_timed": len(gaps)}


# ----- the parent: one child per row, then the table -----------------------------------------------
def child(system: str, folder: Path, iters: int) -> dict:
    if system == "floor":
        return run_floor(folder, iters)
    if system in OURS:
        return run_ours(system, folder, iters)
    return run_trl(system, folder, iters)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--iters", type=int, default=2, help="timed steps per row, after one warm-up step")
    ap.add_argument("--trl116", default=".tox/trl116/bin/python", help="python of an env with trl==1.16.0")
    ap.add_argument("--trl112", default=".tox/trl112/bin/python", help="python of an env with trl==1.12.0")
    ap.add_argument("--only", nargs="+", help="rows to run (default: all)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model instead (checks the harness in seconds)")
    ap.add_argument("--live-memory", action="store_true",
                    help="run every row with glibc's MALLOC_MMAP_THRESHOLD_=1 MiB: each block of 1 MiB or more is returned "
                         "to the OS when freed, so the peak resident set is the peak of live memory rather than of what "
                         "the allocator keeps (slower: fresh pages fault in; take the times from a default run)")
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, Path(args.folder), args.iters)))
        return 0
    for flag, py in (("--trl116", args.trl116), ("--trl112", args.trl112)):
        if not Path(py).is_file():
            print(f"trl_side_by_side: error: {flag} {py!r} is not a python executable (tox -e trl116,trl112 builds them)",
                  file=sys.stderr)
            return 2
    folder = Path(tempfile.mkdtemp(prefix="trl-sbs-"))
    build_workload(folder, tiny=args.tiny)
    params = int((folder / "params.txt").read_text())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; Qwen2 config "
          f"{params / 1e6:.1f}M parameters, {B} prompts x {PROMPT} tokens, {NEW} new tokens, full fine-tune; "
          f"{args.iters} timed steps after 1 warm-up" + ("; live memory (MALLOC_MMAP_THRESHOLD_ = 1 MiB in every row)"
                                                         if args.live_memory else ""), flush=True)
    plan = [(s, sys.executable) for s in OURS] + [(s, args.trl116) for s in TRL116] + [(s, args.trl112) for s in TRL112]
    if args.only:
        plan = [(s, py) for s, py in plan if s in args.only]
    res = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if args.live_memory else None
    for system, py in plan:
        t0 = time.perf_counter()
        p = subprocess.run([py, __file__, "--child", system, "--folder", str(folder), "--iters", str(args.iters)],
                           capture_output=True, text=True, env=env)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{system}: failed (exit {p.returncode})\n{p.stderr[-3000:]}", flush=True)
            continue
        res[system] = json.loads(line[-1][7:])
        print(f"  {system}: {res[system]['s_per_step']:.2f} s/step, {res[system]['peak_mb']:.0f} MB "
              f"({time.perf_counter() - t0:.0f}s wall)", flush=True)
    label = {"rebel": "ours REBEL (1 epoch)", "rebel_mb8": "ours REBEL (1 epoch, 2 micro-batches)",
             "rebel4": "ours REBEL (4 epochs, official)", "rloo": "ours RLOO (k=2)",
             "dpo": "ours DPO (offline)", "floor": "plain PyTorch floor (REBEL's work)", "trl_rloo": "TRL 1.16 RLOO (2 gen.)",
             "trl_dpo": "TRL 1.16 DPO", "trl_ppo": "TRL 1.12 PPO (4 epochs)"}
    print(f"\n{'system':<40}{'s/step':>9}{'peak MB':>10}")
    for s, r in res.items():
        print(f"{label[s]:<40}{r['s_per_step']:>9.2f}{r['peak_mb']:>10.0f}")
    if "floor" in res:
        f = res["floor"]
        print(f"  floor parts: generate {f['generate']:.2f} s, no-grad forward {f['forward_nograd']:.2f} s, "
              f"forward+backward+AdamW {f['forward_backward_adamw']:.2f} s; floor = generate + 1 no-grad forward + "
              f"forward+backward+AdamW (the work of our 1-epoch REBEL step); with a second no-grad forward "
              f"(a separate pi_t pass) {f['s_per_step_two_forwards']:.2f} s")
    print("\nratios (target in brackets):")

    def ratio(a, b, key, target=None):
        if a in res and b in res:
            x = res[a][key] / res[b][key]
            ok = ""
            if target is not None:
                ok = f"  [<= {target}: {'met' if x <= target else f'MISSED by {x / target - 1:.0%}'}]"
            print(f"  {label[a]} / {label[b]} {'time' if key == 's_per_step' else 'memory'}: {x:.2f}{ok}")

    ratio("rebel", "trl_rloo", "s_per_step", 0.8)
    ratio("rebel", "floor", "s_per_step", 1.15)
    ratio("rebel", "trl_rloo", "peak_mb", 1.0)
    ratio("rebel", "trl_ppo", "peak_mb", 0.6)
    ratio("rebel_mb8", "trl_ppo", "peak_mb", 0.6)  # at TRL PPO's 8 sequences per backward
    ratio("rebel_mb8", "trl_rloo", "s_per_step", 0.8)
    ratio("rebel_mb8", "rebel", "s_per_step")
    ratio("rebel4", "trl_rloo", "s_per_step")
    ratio("rebel4", "trl_ppo", "s_per_step")
    ratio("rloo", "trl_rloo", "s_per_step")
    ratio("rloo", "trl_rloo", "peak_mb")
    ratio("dpo", "trl_dpo", "s_per_step")
    ratio("dpo", "trl_dpo", "peak_mb")
    if args.json:
        Path(args.json).write_text(json.dumps({"params": params, "iters": args.iters, "results": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
