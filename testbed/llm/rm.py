"""The pipeline's reward-model stage: a scalar head on the SFT policy's backbone fitted to pairwise comparisons with
the Bradley–Terry loss, as the official ``src/tldr/rm.py``.

The model is transformers' ``AutoModelForSequenceClassification`` with one label, built from the stage's model
(the SFT stage's folder), so the LM stages load it with ``reward: {kind: model, path}`` like any reward model. Its
head is initialised as the official ``ScalarModel``'s, normal with std 1/√(hidden + 1); it has no bias (the official
head's bias starts at 0 and gets no gradient from a loss of score differences). The score is the head's output at
the last non-pad token (official: the token before the first pad of the right-padded ``query_chosen_token``).

Loss: −mean ln σ(r(chosen) − r(rejected)) over the micro-batch (:func:`testbed.losses.dpo_loss` with β = 1 and the
scores in place of log-ratios), chosen and rejected scored in one forward pass; the trainer is
:func:`testbed.llm.sft.train_stage` (the official batch, optimiser and schedule). ``data.fields`` are
``[chosen, rejected]``: each the whole (query + response) sequence, right-padded.

Re-centring (``recentre: reference_mean``, official ``rm.py`` after training): the mean score over the reference
responses of ``recentre_data`` (``fields: [query, reference_response]``, concatenated, or one whole-sequence field) is
subtracted from every later score. The official model stores that mean as ``config.bias`` and its forward returns
head − bias; here the trained model's config gets ``score_offset`` (added to the head's output wherever a score is
read: :func:`scores`, :class:`testbed.llm.rewards.RewardModel`), so ``save_pretrained`` keeps it and the LM and eval
stages load it with the model. ``none`` (the default) leaves the scores as trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from testbed.errors import InputError
from testbed.llm.policy import padded_inputs
from testbed.llm.rewards import last_token_score, score_head, score_offset
from testbed.losses import dpo_loss

RECENTRE = ("none", "reference_mean")


def load_score_model(entry: dict, pad: int, seed: int):
    """A one-label sequence classifier from the model entry, its head initialised as the official one (seeded)."""
    from testbed.llm.models import load_reward_model

    model = load_reward_model(entry)
    model.config.pad_token_id = pad
    head = score_head(model)
    h = head.weight.shape[1]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) / np.sqrt(h + 1))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()
    return model


def scores(model, ids: torch.Tensor, pad: int) -> torch.Tensor:
    """The score of each right-padded sequence: the head at its last non-pad token. Through the model's forward (a DDP /
    DeepSpeed wrapper sees the pass), pads fed as id 0; a hook catches the head's output at every token, read at the
    mask's last position as :class:`testbed.llm.rewards.RewardModel` does (transformers pools at the last id that is
    not ``config.pad_token_id``: wrong once pads go in as 0, identical for an in-vocabulary pad)."""
    mask = (ids != pad).long()
    caught = []
    hook = score_head(model).register_forward_hook(lambda _m, _args, out: caught.append(out))
    try:
        model(**padded_inputs(ids, mask))
    finally:
        hook.remove()
    return last_token_score(caught[0][..., 0].float(), mask) + score_offset(model)


@torch.no_grad()
def pairwise_accuracy(model, chosen: torch.Tensor, rejected: torch.Tensor, pad: int, batch: int = 16) -> float:
    """Share of pairs with r(chosen) > r(rejected) (official ``accuracy``)."""
    from testbed.llm.policy import eval_mode
    dev = next(model.parameters()).device
    wins = []
    with eval_mode(model):
        for s in range(0, len(chosen), batch):
            wins.append(scores(model, chosen[s:s + batch].to(dev), pad) > scores(model, rejected[s:s + batch].to(dev), pad))
    return float(torch.cat(wins).float().mean()) if wins else float("nan")


@torch.no_grad()
def recentre(model, ids: torch.Tensor, pad: int, batch: int = 16, acc=None) -> dict:
    """Shift the model's ``score_offset`` so that the mean score over the sequences ``ids`` is 0 (each process scores
    its share of the rows, the sums are gathered). Returns the mean before, the offset before and after."""
    from testbed.llm.policy import eval_mode, unwrap
    m = unwrap(model)
    dev = next(m.parameters()).device
    W, r = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
    total = torch.zeros(2, dtype=torch.float64, device=dev)
    rounds = -(-len(ids) // (W * batch))  # every process runs this many forward passes (ZeRO-3's are collective)
    with eval_mode(m):
        for k in range(rounds):
            s = (k * W + r) * batch
            rows = ids[s:s + batch]
            sc = scores(m, (rows if len(rows) else ids[:1]).to(dev), pad).double()  # a spare pass: rows of none
            if len(rows):
                total += torch.stack([sc.sum(), torch.tensor(float(len(sc)), dtype=torch.float64, device=dev)])
    if W > 1:
        total = acc.gather(total[None]).sum(0)
    if total[1] == 0:
        raise InputError("recentre_data: no rows to re-centre the reward model on")
    mean, before = float(total[0] / total[1]), score_offset(m)
    m.config.score_offset = before - mean
    return {"recentre_mean_before": mean, "score_offset_before": before, "score_offset": m.config.score_offset}


def run_reward_model(st: dict, folder: Path) -> tuple[list[dict], dict, object, object, dict]:
    """Train the reward-model stage: (metric rows, summary with held-out accuracy before and after, model, tokenizer,
    the model's state dict to save)."""
    from testbed.llm.models import load_tokenizer
    from testbed.llm.policy import vocabulary_size
    from testbed.llm.sft import load_rows, stage_accelerator, train_stage

    fields = st["data"]["fields"]  # [chosen, rejected]: checked by load_pipeline
    acc = stage_accelerator(st)
    tok = load_tokenizer(st["model"])
    pad = tok.pad_token_id
    model = load_score_model(st["model"], pad, st.get("seed", 0)).to(acc.device)
    V = vocabulary_size(model)
    rows_ = load_rows(st["data"], folder, V, f"stage {st['name']}.data", pad)
    c, r = rows_[fields[0]], rows_[fields[1]]
    held = None
    if st.get("eval_data"):
        ev = load_rows(st["eval_data"], folder, V, f"stage {st['name']}.eval_data", pad)
        held = (ev[st["eval_data"]["fields"][0]], ev[st["eval_data"]["fields"][1]])
    before = pairwise_accuracy(model, *held, pad) if held else None

    def loss_fn(m, idx):
        n = len(idx)
        L = max(c.shape[1], r.shape[1])
        both = torch.cat([torch.nn.functional.pad(c[idx], (0, L - c.shape[1]), value=pad),
                          torch.nn.functional.pad(r[idx], (0, L - r.shape[1]), value=pad)]).to(acc.device)
        s = scores(m, both, pad)
        sc, sr = s[:n], s[n:]
        return dpo_loss(sc, sr, beta=1.0), {"rewards/chosen": sc.mean(), "rewards/rejected": sr.mean(),
                                            "rewards/margins": (sc - sr).mean(), "rewards/accuracies": (sc > sr).float().mean()}

    rows, model, state_dict = train_stage(st, acc, model, len(c), loss_fn)
    after = pairwise_accuracy(model, *held, pad) if held else None
    summary = {"heldout_accuracy_before": before, "heldout_accuracy_after": after, "pairs": len(c)}
    if st.get("recentre", "none") == "reference_mean":
        from testbed.llm.sft import sequences
        ids, _ = sequences(load_rows(st["recentre_data"], folder, V, f"stage {st['name']}.recentre_data", pad),
                           st["recentre_data"]["fields"])
        summary.update(recentre(model, ids, pad, st["train"]["per_device_batch"], acc))
    return rows, summary, model, tok, state_dict
