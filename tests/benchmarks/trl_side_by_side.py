"""Side by side with TRL: seconds per step and peak memory of our REBEL, DPO and RLOO against TRL 1.16's
RLOOTrainer and DPOTrainer, TRL 1.12's PPOTrainer, and a plain-PyTorch floor, on one workload.

    python tests/benchmarks/trl_side_by_side.py --trl116 PY --trl112 PY [--iters 2] [--repeats 3]
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
environments), ``--repeats`` times: in interleaved rounds, round i running every row once in an order
rotated by i·n/R (sbs_stats.rotations), so no row always goes first and machine drift hits every row
alike. A repeat's seconds per step: the mean over ``--iters`` steps after one warm-up step (TRL: time
between consecutive ``on_step_end`` callbacks; ours: around ``algorithm.lm_update``; PPO: one update =
a rollout plus ``num_ppo_epochs`` = 4 passes); a row reports the median of its repeats and their spread
((max - min) / median). Peak memory: the child's peak resident set (``ru_maxrss``) minus its resident set
after imports, before any model is loaded -- the same for every row, so models held, optimiser state
and activations all count; a row reports the median of its repeats. The floor is plain PyTorch on the
same model, each part of REBEL's one-epoch work timed alone (``--iters`` times after a warm-up, in every
repeat): ``generate`` of 16 x 32 tokens, a no-grad forward over 16 x 48 tokens (pi_ref's log-probs; our
one-epoch REBEL takes pi_t from the step's own forward) and one forward + backward + AdamW step over
16 x 48 tokens, each forward running the LM head over the 33 positions the loss reads (``logits_to_keep``, as ours).
The floor = the sum of each part's fastest repeat, a lower bound of that work: a row doing it (``rebel``,
``rebel_mb8``) whose fastest repeat is below the floor gets a warning.
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
from statistics import median

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
B, PROMPT, NEW, LR, BETA, VOCAB = 8, 16, 32, 1e-6, 0.05, 4096
WORDS = [f"w{i}" for i in range(VOCAB - 3)]  # ids 3..4095; [PAD]=0, [EOS]=1, [BOS]=2
OURS = ("rebel", "rebel_mb8", "rebel4", "rloo", "dpo", "floor")
TRL116 = ("trl_rloo", "trl_dpo")
TRL112 = ("trl_ppo",)
FLOOR_PARTS = {"generate": 1, "forward_nograd": 1, "forward_backward_adamw": 1}  # times each runs in REBEL's step
FLOOR_WORK = ("rebel", "rebel_mb8")  # the rows doing exactly the floor's work
from llm_memory import rss_mb  # noqa: E402  (stdlib only: the TRL children's venvs lack the testbed)
from sbs_stats import below_floor, floor_bound, rotations, summary  # noqa: E402  (stdlib only, too)


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
        alg.lm_update(q, qm)
        ctx.scheduler.step()  # as the training loop (testbed/llm/train.py)
        if i:
            times.append(time.perf_counter() - t0)
    return {"s_per_step": sum(times) / len(times), "peak_mb": peak_mb(base), "torch_threads": torch.get_num_threads()}


def run_floor(folder: Path, iters: int) -> dict:
    """Plain PyTorch: the work of one REBEL step (1 epoch), each part timed alone: mean seconds of each."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = rss_mb()
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    model = AutoModelForCausalLM.from_pretrained(folder / "model").eval()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # as ours and TRL (adamw_torch_fused)
    prompts = [json.loads(x)["prompt"] for x in open(folder / "prompts.jsonl")] * 2
    enc = tok(prompts, return_tensors="pt")
    torch.manual_seed(0)
    out = None

    def generate():
        nonlocal out
        # sampled as ours samples (no min_new_tokens: its logits processor made the floor's generate ~20% slower than
        # ours on the tiny model); a batch that ended early at EOS would only make the floor smaller, still a bound
        out = model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=NEW, pad_token_id=0, eos_token_id=1)

    def forward_nograd():  # the LM head over the response's L + 1 positions the loss reads, as ours (logits_to_keep)
        with torch.no_grad():
            model(input_ids=out, logits_to_keep=out.shape[1] - PROMPT + 1)

    def forward_backward_adamw():
        logits = model(input_ids=out, logits_to_keep=out.shape[1] - PROMPT + 1).logits[:, :-1].float()
        torch.gather(logits.log_softmax(-1), 2, out[:, PROMPT:, None]).sum().backward()
        opt.step()
        opt.zero_grad()

    mean = {}
    for name, fn in (("generate", generate), ("forward_nograd", forward_nograd),
                     ("forward_backward_adamw", forward_backward_adamw)):
        times = []
        for i in range(iters + 1):  # a warm-up call, then ``iters`` timed ones of this part alone
            t0 = time.perf_counter()
            fn()
            if i:
                times.append(time.perf_counter() - t0)
        mean[name] = sum(times) / len(times)
    return {"s_per_step": sum(c * mean[k] for k, c in FLOOR_PARTS.items()), "peak_mb": peak_mb(base),
            "torch_threads": torch.get_num_threads(), **mean}


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


# ----- the parent: one child per row and repeat, then the table -------------------------------------
def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"


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
    ap.add_argument("--iters", type=positive, default=2, help="timed steps per row, after one warm-up step")
    ap.add_argument("--repeats", type=positive, default=3, help="runs of each row, in interleaved rotated rounds")
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
    plan = dict([(s, sys.executable) for s in OURS] + [(s, args.trl116) for s in TRL116] + [(s, args.trl112) for s in TRL112])
    if args.only:
        plan = {s: py for s, py in plan.items() if s in args.only}
    runs, failed = {s: [] for s in plan}, set()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)} if args.live_memory else None
    for k, order in enumerate(rotations(list(plan), args.repeats)):
        print(f"round {k + 1}/{args.repeats} (load average {load()}): {' '.join(order)}", flush=True)
        for system in (s for s in order if s not in failed):
            t0 = time.perf_counter()
            p = subprocess.run([plan[system], __file__, "--child", system, "--folder", str(folder), "--iters",
                                str(args.iters)], capture_output=True, text=True, env=env)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:  # a row that fails once is not run again
                print(f"{system}: failed (exit {p.returncode})\n{p.stderr[-3000:]}", flush=True)
                failed.add(system)
                continue
            runs[system].append(json.loads(line[-1][7:]))
            print(f"  {system}: {runs[system][-1]['s_per_step']:.2f} s/step, {runs[system][-1]['peak_mb']:.0f} MB "
                  f"({time.perf_counter() - t0:.0f}s wall)", flush=True)
    runs = {s: v for s, v in runs.items() if v and s not in failed}
    stats = {s: summary([r["s_per_step"] for r in v]) for s, v in runs.items()}
    res = {s: {"s_per_step": stats[s]["median"], "peak_mb": median([r["peak_mb"] for r in v])} for s, v in runs.items()}
    if "floor" in runs:
        parts = {k: [r[k] for r in runs["floor"]] for k in FLOOR_PARTS}
        res["floor"]["s_per_step"] = floor_bound(parts, FLOOR_PARTS)
    label = {"rebel": "ours REBEL (1 epoch)", "rebel_mb8": "ours REBEL (1 epoch, 2 micro-batches)",
             "rebel4": "ours REBEL (4 epochs, official)", "rloo": "ours RLOO (k=2)",
             "dpo": "ours DPO (offline)", "floor": "plain PyTorch floor (REBEL's work)", "trl_rloo": "TRL 1.16 RLOO (2 gen.)",
             "trl_dpo": "TRL 1.16 DPO", "trl_ppo": "TRL 1.12 PPO (4 epochs)"}
    print(f"\nload average at the end: {load()}; s/step: median of {args.repeats} repeats (each the mean of "
          f"{args.iters} steps), spread = (max - min) / median; peak MB: median of the repeats")
    print(f"{'system':<40}{'s/step':>9}{'spread':>8}{'min':>8}{'max':>8}{'peak MB':>10}")
    for s, r in res.items():
        st = stats[s]
        print(f"{label[s]:<40}{r['s_per_step']:>9.2f}{st['spread_pct']:>7.0f}%{st['min']:>8.2f}{st['max']:>8.2f}"
              f"{r['peak_mb']:>10.0f}")
    if "floor" in res:
        print(f"  floor = the sum of each part's fastest repeat (each part timed alone, {len(runs['floor'])} repeats): "
              + " + ".join(f"{k} {min(v):.3f} s" for k, v in parts.items()) + f" = {res['floor']['s_per_step']:.3f} s "
              f"(the floor row's min/max: the sums of each repeat's parts; a second no-grad forward, a separate pi_t "
              f"pass, would add {min(parts['forward_nograd']):.3f} s)")
        for w in below_floor({s: [r["s_per_step"] for r in v] for s, v in runs.items()}, res["floor"]["s_per_step"],
                             FLOOR_WORK):
            print(w)
    print("\nratios of medians (the floor: its lower bound; target in brackets):")

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
        Path(args.json).write_text(json.dumps({"params": params, "iters": args.iters, "repeats": args.repeats,
                                               "results": res, "stats": stats, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
