"""The pipeline's evaluation stage: each trained policy against the data set's reference responses, as the official
``rebel.py`` ``evaluate`` does, plus a held-out judge's win rate.

For every row of ``data`` (fields ``[query, reference_response]``: the left-padded query tokens and the reference
summary's tokens) and every policy stage, one response is sampled (``temperature``, official 0.01;
``max_new_tokens``, official 53; tokens after the first EOS become padding) and recorded with

- ``score``: the reward stage's model on (query, response), ``reference_score`` on (query, reference) — raw scores,
  no missing-EOS penalty (official);
- ``kl``: Σ_t ln π(y_t | ·) − ln π_sft(y_t | ·) over the response up to and including its first EOS, both at the
  sampling temperature (official: over all 53 columns, the generation not stopping at EOS);
- ``judge``, ``judge_reference``: the judge's scores of the response and the reference; ``win`` = 1 if the first is
  larger, ½ on a tie, 0 otherwise. A judge ``{module: pkg.mod:fn}`` is called as
  ``fn(queries, responses, references) -> [P(response beats reference)]`` on the decoded texts (an LLM judge).

Metric rows (one per policy): ``eval/rm_score`` (mean score), ``eval/kl``, ``eval/win_rate`` with its 95% Wilson
interval (``eval/win_rate_lo``, ``_hi``), ``reward`` (mean score − mean reference score). The rows are sharded over
the processes, ``per_device_batch`` at a time, and gathered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from testbed.results import LM_COLUMNS


def load_policy(path: str, base_entry: dict):
    """A policy a stage saved: a full model folder, or a LoRA adapter folder on top of ``base_entry``'s model."""
    from testbed.llm.models import load_causal_lm
    if (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file():
        from peft import PeftModel
        return PeftModel.from_pretrained(load_causal_lm(base_entry), path).merge_and_unload().eval()
    return load_causal_lm({"path": path}).eval()


def _judge(st: dict, tok, device):
    judge = st["judge"]
    if "module" in judge:
        from testbed.llm.checks import check_reward_module
        fn = check_reward_module(judge["module"], "judge.module")
        return lambda q, qm, y, yref: _module_judge(fn, tok, q, qm, y, yref)
    rm = _reward(judge, tok, device)
    return lambda q, qm, y, yref: (rm(q, qm, y), rm(q, qm, yref))


def _module_judge(fn, tok, q, qm, y, yref):
    from testbed.llm.tldr import prompt_texts, response_texts
    p = torch.as_tensor(fn(prompt_texts(tok, q, qm), response_texts(tok, y, tok.eos_token_id),
                           response_texts(tok, yref, tok.eos_token_id)), dtype=torch.float64)
    return p, 1 - p  # win iff P > 1/2


def _reward(entry: dict, tok, device):
    from testbed.llm.models import load_reward_model, reward_model_entry
    from testbed.llm.rewards import RewardModel
    m = load_reward_model(reward_model_entry(entry))
    return RewardModel(m.to(device).eval().requires_grad_(False), tok.pad_token_id, tok.eos_token_id)


@torch.no_grad()
def run_eval(st: dict, stages: dict, paths: dict, folder: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """(one metric row per policy, the per-row records of each policy).

    In four phases, one model on the device at a time: each policy samples its responses (and their ln pi), then
    the reference policy, the reward model and the judge score them all. The batches and the sampling seeds are
    those of every model at once, so the numbers are the same; the memory is the largest model's, not the sum."""
    from accelerate.utils import gather_object

    from testbed.llm.distributed import accelerator
    from testbed.llm.models import load_tokenizer, model_config
    from testbed.llm.policy import LMPolicy
    from testbed.llm.sft import load_rows
    from testbed.llm.tldr import wilson_interval

    acc = accelerator(1)
    ref_entry = {**stages[st["reference"]]["model"], "path": paths[st["reference"]]}
    tok = load_tokenizer(ref_entry)
    pad = tok.pad_token_id
    data = load_rows(st["data"], folder, model_config(ref_entry).vocab_size, f"stage {st['name']}.data", pad)
    qf, rf = st["data"]["fields"][:2]
    mine = np.array_split(np.arange(len(data[qf])), acc.num_processes)[acc.process_index]
    T, L, bs = float(st.get("temperature", 0.01)), int(st.get("max_new_tokens", 53)), int(st["per_device_batch"])
    batches = []
    for s in range(0, len(mine), bs):
        idx = torch.as_tensor(mine[s:s + bs])
        q = data[qf][idx].to(acc.device)
        batches.append((idx, q, (q != pad).long(), data[rf][idx].to(acc.device)))
    seed = int(st.get("seed", 0)) + 7919 * acc.process_index
    out = []  # per policy (by position), per batch: y, ln pi, mask, then ln pi_ref, scores, judge scores
    for i, name in enumerate(st["policies"]):  # phase 1: each policy samples
        model = load_policy(paths[name], ref_entry).to(acc.device).requires_grad_(False)
        pol = LMPolicy(model, tok, temperature=T, max_new_tokens=L, ref=None)
        out.append([])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1_000_003 * (i + 1))
            for _, q, qm, _ in batches:
                y = pol.generate(q, qm)
                lp, mask = pol.logprobs(q, qm, y)
                out[i].append({"y": y, "lp": lp, "mask": mask})
        del model, pol
        acc.free_memory()  # the weights leave the device before the next load
    ref = LMPolicy(load_policy(paths[st["reference"]], ref_entry).to(acc.device).requires_grad_(False), tok,
                   temperature=T, max_new_tokens=L, ref=None)
    for pol_out in out:  # phase 2: the reference policy's ln pi_ref of the responses
        for b, (_, q, qm, _) in zip(pol_out, batches):
            b["lref"] = ref.logprobs(q, qm, b["y"])[0]
    del ref
    acc.free_memory()
    rm = _reward({"path": paths[st["reward"]]}, tok, acc.device)
    for pol_out in out:  # phase 3: the reward model
        for b, (_, q, qm, yref) in zip(pol_out, batches):
            b["score"], b["rscore"] = rm(q, qm, b["y"]), rm(q, qm, yref)
    del rm
    acc.free_memory()
    judge = _judge(st, tok, acc.device)
    for i, pol_out in enumerate(out):  # phase 4: the judge (a module judge draws from its own seeded stream)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1_000_003 * (i + 1) + 500_009)
            for b, (_, q, qm, yref) in zip(pol_out, batches):
                b["j"], b["jref"] = judge(q, qm, b["y"], yref)
    del judge
    rows, records = [], {}
    for name, pol_out in zip(st["policies"], out):
        recs = []
        for b, (idx, q, qm, yref) in zip(pol_out, batches):
            y, mask, j, jref = b["y"], b["mask"], b["j"], b["jref"]
            for k in range(len(idx)):
                recs.append({"row": int(idx[k]), "query": q[k][qm[k].bool()].tolist(),
                             "response": y[k][mask[k].bool()].tolist(), "reference": yref[k].tolist(),
                             "score": float(b["score"][k]), "reference_score": float(b["rscore"][k]),
                             "kl": float((b["lp"][k] - b["lref"][k]).sum()), "judge": float(j[k]),
                             "judge_reference": float(jref[k]),
                             "win": 1.0 if j[k] > jref[k] else 0.5 if j[k] == jref[k] else 0.0})
        recs = sorted(gather_object(recs) if acc.num_processes > 1 else recs, key=lambda r: r["row"])
        records[name] = recs
        n = len(recs)
        wins = sum(r["win"] for r in recs)
        lo, hi = wilson_interval(wins, n)
        row = {c: None for c in LM_COLUMNS}
        row.update(run_id=name, problem=st["name"], algorithm=name, seed=int(st.get("seed", 0)), iteration=0, samples=n,
                   queries=0, **{"eval/rm_score": float(np.mean([r["score"] for r in recs])),
                                 "eval/kl": float(np.mean([r["kl"] for r in recs])), "eval/win_rate": wins / n,
                                 "eval/win_rate_lo": lo, "eval/win_rate_hi": hi,
                                 "reward": float(np.mean([r["score"] - r["reference_score"] for r in recs]))})
        row["eval/scores"] = row["eval/rm_score"]
        rows.append(row)
    return rows, records
