"""The pipeline's supervised stages on a data set's pre-tokenised fields: the shared trainer, and SFT.

The arithmetic is the official ``src/tldr/sft.py`` (and ``rm.py``, :mod:`testbed.llm.rm`):

- a global batch of per_device_batch × grad_accum × processes rows per update, each process taking its share in
  grad_accum micro-batches through ``accelerate``'s gradient accumulation; updates per epoch = ⌊rows / batch⌋
  (``num_updates = total_episodes // batch_size``); the rows are reshuffled each epoch (one numpy stream, the
  same on every process);
- torch AdamW (``lr``, ``adam_eps``, ``weight_decay``: torch's default 0.01, which the official code keeps) and
  transformers' ``get_scheduler(scheduler, warmup 0, updates × epochs)``, stepped once per update; no clipping
  unless ``max_grad_norm`` (DeepSpeed's ``gradient_clipping`` clips inside its step);
- a forward pass with attention mask = (token ≠ pad) and the pad ids replaced by 0, position ids counting real
  tokens only (the LM track's convention; the official forward counts every column, the same for its
  right-padded ``query_*_token`` fields);
- SFT loss: cross-entropy of every next token that is not padding, a mean over the micro-batch's tokens
  (``loss: sequence``, official: the query's tokens count too) or over the response's tokens only
  (``loss: response``, with two fields ``[query, response]``).

A stage's data entry is ``{hf_dataset: NAME, split, fields, count}`` (``datasets``) or ``{file: PATH.jsonl, fields,
count}`` (one JSON object per row, each field a list of token ids of one length).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from testbed.errors import InputError
from testbed.llm.pipeline import stage_run_id
from testbed.llm.policy import padded_inputs, vocabulary_size
from testbed.results import LM_COLUMNS

LOSSES = ("sequence", "response")


def load_rows(entry: dict, folder: Path, vocab: int, where: str = "data", pad: int | None = None) -> dict[str, torch.Tensor]:
    """Each field of a data entry as a LongTensor [rows, length] (the first ``count`` rows), every id a row of the
    model's embedding (``vocab`` of them) or the tokenizer's ``pad`` (never looked up: pads go in as id 0)."""
    fields, n = entry["fields"], entry.get("count")
    if "file" in entry:
        from testbed.io import read_jsonl
        p = Path(entry["file"]) if Path(entry["file"]).is_absolute() else folder / entry["file"]
        rows = read_jsonl(p, tuple(fields), list)[:n]
        cols = {f: [r[f] for r in rows] for f in fields}
    else:
        import datasets
        ds = datasets.load_dataset(entry["hf_dataset"], split=entry.get("split", "train"))
        if n is not None:
            ds = ds.select(range(min(int(n), len(ds))))
        missing = [f for f in fields if f not in ds.column_names]
        if missing:
            raise InputError(f"data.fields: {entry['hf_dataset']!r} has no column(s) {missing}; it has {ds.column_names}")
        cols = {f: ds[f] for f in fields}
    out = {}
    for f, v in cols.items():
        try:
            out[f] = torch.tensor(v, dtype=torch.long)
        except (TypeError, ValueError):
            raise InputError(f"data.fields: {f!r} must hold lists of token ids of one length per row") from None
        if out[f].ndim != 2:
            raise InputError(f"data.fields: {f!r} must hold a list of token ids per row")
        bad = out[f][(out[f] < 0) | ((out[f] >= vocab) & (out[f] != pad))]  # a pad-less tokenizer's [PAD] may be >= vocab
        if len(bad):
            raise InputError(f"{where}.fields: {f!r} holds token id {int(bad[0])}, outside the model's vocabulary "
                             f"[0, {vocab})")
    return out


def sequences(rows: dict, fields: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(token ids [N, T], response mask [N, T] or None): one field, or [query, response] concatenated."""
    if len(fields) == 1:
        return rows[fields[0]], None
    q, r = rows[fields[0]], rows[fields[1]]
    return torch.cat([q, r], 1), torch.cat([torch.zeros_like(q, dtype=torch.bool), torch.ones_like(r, dtype=torch.bool)], 1)


def lm_forward(model, ids: torch.Tensor, pad: int):
    """The model's output on padded ids: attention mask = ids ≠ pad (:func:`~testbed.llm.policy.padded_inputs`)."""
    return model(**padded_inputs(ids, (ids != pad).long()))


def token_nll(model, ids: torch.Tensor, pad: int, response: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies, number of tokens counted) over the non-pad targets (of the response)."""
    logits = lm_forward(model, ids, pad).logits[:, :-1].float()
    labels = ids[:, 1:].masked_fill(ids[:, 1:] == pad, -100)
    if response is not None:
        labels = labels.masked_fill(~response[:, 1:], -100)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
    return nll, (labels != -100).sum()


@torch.no_grad()
def heldout_ce(model, ids: torch.Tensor, pad: int, response=None, batch: int = 16) -> float:
    """Mean next-token cross-entropy over every counted token of a held-out set (micro-batches of ``batch``)."""
    from testbed.llm.policy import eval_mode
    tot, n = 0.0, 0
    dev = next(model.parameters()).device
    with eval_mode(model):
        for s in range(0, len(ids), batch):
            a, b = token_nll(model, ids[s:s + batch].to(dev), pad, None if response is None else response[s:s + batch].to(dev))
            tot, n = tot + float(a), n + int(b)
    return tot / max(n, 1)


def stage_accelerator(st: dict):
    """The stage's Accelerator: its DeepSpeed config (``auto`` fields from the stage's batch) when it names one."""
    from testbed.llm.distributed import accelerator, read_deepspeed, resolve_deepspeed, world_size
    tr = st["train"]
    ds, mp = None, "no"
    if st.get("deepspeed_path"):
        raw = read_deepspeed(st["deepspeed_path"], f"stage {st['name']}.deepspeed")
        mp = next((k for k in ("bf16", "fp16") if (raw.get(k) or {}).get("enabled") is True), "no")
        ds = resolve_deepspeed(raw, micro=tr["per_device_batch"], grad_accum=tr["grad_accum"], world=world_size(),
                               mixed_precision=mp, max_grad_norm=tr.get("max_grad_norm", 0.0),
                               where=f"stage {st['name']}.deepspeed")
    return accelerator(tr["grad_accum"], mp, ds)


def train_stage(st: dict, acc, model, n_rows: int, loss_fn):
    """Train ``model`` (prepared here) on ``n_rows`` rows: ``loss_fn(module, idx) -> (loss, stats)``. Returns the metric
    rows, the trained model (unwrapped, eval mode) and its full state dict (gathered under DeepSpeed), and releases
    what ``prepare`` registered with the process's Accelerator (the next stage shares it)."""
    from transformers import get_scheduler

    from testbed.llm.policy import unwrap
    from testbed.training import check_finite, train

    tr, seed, W, r = st["train"], st.get("seed", 0), acc.num_processes, acc.process_index
    G = tr["grad_accum"]
    B = tr["per_device_batch"] * G * W
    U = n_rows // B
    if U == 0:
        raise InputError(f"stage {st['name']}: {n_rows} rows make no update of a global batch of {B} "
                         f"(per_device_batch × grad_accum × processes)")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tr["lr"], eps=tr["adam_eps"], weight_decay=tr.get("weight_decay", 0.01))
    sched = get_scheduler(tr["scheduler"], optimizer=opt, num_warmup_steps=0, num_training_steps=U * tr["epochs"])
    prepared, opt = acc.prepare(model, opt)
    acc.gradient_accumulation_steps, acc.step = G, 0
    prepared.train()
    rng = np.random.default_rng(seed)
    state = type("S", (), {"t": 0, "perm": None, "stats": None})()
    rows, start = [], time.perf_counter()

    def step(t: int) -> None:
        u = (t - 1) % U
        if u == 0:
            state.perm = rng.permutation(n_rows)
        mine = np.array_split(state.perm[u * B:(u + 1) * B], W)[r]
        got = []
        for micro in np.array_split(mine, G):
            with acc.accumulate(prepared):
                loss, stats = loss_fn(prepared, torch.as_tensor(micro, dtype=torch.long))
                acc.backward(loss)
                if acc.sync_gradients and tr.get("max_grad_norm", 0) > 0:
                    acc.clip_grad_norm_(params, tr["max_grad_norm"])
                opt.step()
                opt.zero_grad()
            got.append({"loss": loss.detach().float(), **{k: v.detach().float() for k, v in stats.items()}})
        sched.step()
        keys = list(got[0])  # one collective for every statistic: [processes·K, micro-batches] -> mean per key
        every = acc.gather(torch.stack([torch.stack([g[k] for g in got]) for k in keys]).to(acc.device))
        state.stats = dict(zip(keys, every.reshape(-1, len(keys), len(got)).mean((0, 2)).tolist()))

    def record(t: int) -> None:
        row = {c: None for c in LM_COLUMNS}
        row.update(run_id=stage_run_id(st), problem=st["name"], algorithm=st["kind"], seed=seed, iteration=t,
                   samples=t * B, queries=0, wall_time=time.perf_counter() - start, lr=sched.get_last_lr()[0])
        if t:
            row["loss"] = row["loss/policy"] = state.stats["loss"]
            row.update({k: v for k, v in state.stats.items() if k != "loss"})
        rows.append(row)
        check_finite(row["run_id"], t, {k: v for k, v in row.items() if isinstance(v, float)})

    train(state, U * tr["epochs"], step, record, tr.get("log_every", 1))
    trained, state_dict = unwrap(acc.unwrap_model(prepared)).eval(), acc.get_state_dict(prepared)
    acc.free_memory()  # the stage's prepared model and optimiser: not held through the later stages
    return rows, trained, state_dict


def run_sft(st: dict, folder: Path) -> tuple[list[dict], dict, object, object, dict]:
    """Train the SFT stage: (metric rows, summary with the held-out cross-entropy before and after, model, tokenizer,
    the model's state dict to save)."""
    from testbed.llm.models import load_causal_lm, load_tokenizer

    acc = stage_accelerator(st)
    torch.manual_seed(st.get("seed", 0))
    tok = load_tokenizer(st["model"])
    model = load_causal_lm(st["model"]).to(acc.device)
    pad, how = tok.pad_token_id, st.get("loss", "sequence")
    fields = st["data"]["fields"]
    if how == "response" and len(fields) != 2:
        raise InputError(f"stage {st['name']}.loss: response needs data.fields [query, response] (got {fields})")
    V = vocabulary_size(model)
    ids, resp = sequences(load_rows(st["data"], folder, V, f"stage {st['name']}.data", pad), fields)
    held = None
    if st.get("eval_data"):
        held = sequences(load_rows(st["eval_data"], folder, V, f"stage {st['name']}.eval_data", pad), st["eval_data"]["fields"])
    hresp = lambda h: h[1] if how == "response" else None  # noqa: E731
    before = heldout_ce(model, held[0], pad, hresp(held)) if held else None

    def loss_fn(m, idx):
        nll, n = token_nll(m, ids[idx].to(acc.device), pad, resp[idx].to(acc.device) if how == "response" else None)
        return nll / n.clamp(min=1), {}

    rows, model, state_dict = train_stage(st, acc, model, len(ids), loss_fn)
    after = heldout_ce(model, held[0], pad, hresp(held)) if held else None
    return rows, {"heldout_ce_before": before, "heldout_ce_after": after, "rows": len(ids)}, model, tok, state_dict
