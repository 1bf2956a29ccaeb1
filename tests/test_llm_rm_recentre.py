"""Reward-model re-centring (official ``src/tldr/rm.py``: after training, the mean predicted reward over the train
split's reference summaries becomes ``config.bias`` and every score is head − bias): ``recentre: reference_mean``
makes the mean score over the reference responses 0, and the offset moves by minus the mean before."""

import json

import numpy as np
import pytest
import yaml

pytest.importorskip("transformers")

import torch  # noqa: E402

from testbed.cli import main  # noqa: E402
from testbed.llm.models import load_reward_model  # noqa: E402
from testbed.llm.rewards import RewardModel, score_offset  # noqa: E402
from testbed.llm.rm import load_score_model, recentre, scores  # noqa: E402

PAD, EOS = 0, 1
Q, R = 5, 4


def reference_rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TL;DR layout: left-padded queries [n, Q], right-padded reference responses ending in EOS [n, R]."""
    rng = np.random.default_rng(seed)
    qs, rs = [], []
    for _ in range(n):
        q = rng.integers(3, 15, size=rng.integers(1, Q + 1)).tolist()
        r = rng.integers(3, 15, size=rng.integers(0, R)).tolist() + [EOS]
        qs.append([PAD] * (Q - len(q)) + q)
        rs.append(r + [PAD] * (R - len(r)))
    return torch.tensor(qs), torch.tensor(rs)


def raw_scores(model, q: torch.Tensor, r: torch.Tensor) -> np.ndarray:
    """An independent reward: the classifier's logit at the last token of each unpadded sequence, one at a time
    (no offset: what the trained head gives)."""
    out = []
    with torch.no_grad():
        for qi, ri in zip(q.tolist(), r.tolist()):
            ids = [t for t in qi if t != PAD] + [t for t in ri if t != PAD]
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_recentre_makes_the_reference_mean_zero_and_shifts_by_minus_the_mean(arch):
    model = load_score_model({"name": f"tiny:{arch}", "hidden": 32, "layers": 2, "heads": 2, "seed": 1}, PAD, seed=2)
    q, r = reference_rows(50, seed=0)
    before = raw_scores(model, q, r).mean()
    assert abs(before) > 1e-3  # a random head: something to remove
    got = recentre(model, torch.cat([q, r], 1), PAD, batch=16)
    assert got["recentre_mean_before"] == pytest.approx(before, abs=1e-6)
    assert got["score_offset"] - got["score_offset_before"] == pytest.approx(-before, abs=1e-6)
    assert score_offset(model) == got["score_offset"]
    with torch.no_grad():
        after = scores(model, torch.cat([q, r], 1), PAD)
    assert abs(float(after.double().mean())) < 1e-6
    rm = RewardModel(model, PAD, EOS)  # the LM stages' scorer reads the same offset
    assert abs(float(rm.score(q, (q != PAD).long(), r).double().mean())) < 1e-6
    np.testing.assert_allclose(rm.score(q, (q != PAD).long(), r).numpy(), raw_scores(model, q, r) - before, atol=1e-5)
    again = recentre(model, torch.cat([q, r], 1), PAD, batch=7)  # already centred: the shift is (numerically) 0
    assert abs(again["recentre_mean_before"]) < 1e-6


def test_the_rm_stage_saves_a_recentred_model_that_the_lm_stages_load(tmp_path, capsys):
    q, r = reference_rows(40, seed=3)
    refs = [{"query_token": a, "reference_response_token": b} for a, b in zip(q.tolist(), r.tolist())]
    rng = np.random.default_rng(1)
    pairs = []
    for a in q.tolist():
        body = [t for t in a if t != PAD]
        c, d = body + [3, 3, EOS], body + [4, 4, EOS]
        pairs.append({"chosen": (c + [PAD] * 9)[:Q + R], "rejected": (d + [PAD] * 9)[:Q + R]})
    rng.shuffle(pairs)
    (tmp_path / "refs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in refs))
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in pairs))
    stage = {"name": "rm", "kind": "reward_model", "seed": 4,
             "model": {"name": "tiny:gpt2", "hidden": 32, "layers": 2, "heads": 2, "seed": 0},
             "train": {"lr": 1e-3, "adam_eps": 1e-5, "scheduler": "cosine", "epochs": 1, "per_device_batch": 8,
                       "grad_accum": 1, "processes": 1, "seq": Q + R},
             "data": {"file": "pairs.jsonl", "fields": ["chosen", "rejected"]},
             "recentre": "reference_mean",
             "recentre_data": {"file": "refs.jsonl", "fields": ["query_token", "reference_response_token"]}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"name": "t", "out": str(tmp_path / "runs"),
                                                            "stages": [stage]}))
    assert main(["llm", "pipeline", str(tmp_path)]) == 0
    ck = tmp_path / "runs" / "rm" / "checkpoints" / "reward_model-0-s4"
    m = load_reward_model({"path": str(ck)})
    offset = m.config.score_offset
    m.config.score_offset = 0.0
    mean_raw = raw_scores(m, q, r).mean()  # the trained head's mean on the references, computed independently
    m.config.score_offset = offset
    assert offset == pytest.approx(-mean_raw, abs=1e-6)
    meta = json.loads((tmp_path / "runs" / "rm" / "meta.json").read_text())
    assert meta["summary"]["recentre_mean_before"] == pytest.approx(mean_raw, abs=1e-6)
    assert abs(float(RewardModel(m, PAD, EOS).score(q, (q != PAD).long(), r).double().mean())) < 1e-6


BASE = {"name": "rm", "kind": "reward_model", "model": {"name": "tiny:gpt2"},
        "data": {"file": "p.jsonl", "fields": ["c", "r"]},
        "train": {"lr": 1e-3, "adam_eps": 1e-5, "scheduler": "cosine", "epochs": 1, "per_device_batch": 8,
                  "grad_accum": 1, "processes": 1, "seq": 8}}
REF = {"file": "refs.jsonl", "fields": ["query_token", "reference_response_token"]}


@pytest.mark.parametrize("extra, message", [
    ({"recentre": "median"}, "stages[0] (rm).recentre must be one of none, reference_mean"),
    ({"recentre": "reference_mean"}, "stages[0] (rm).recentre_data must be {hf_dataset"),
    ({"recentre_data": REF}, "stages[0] (rm).recentre_data is read only with recentre: reference_mean"),
    ({"recentre": "reference_mean", "recentre_data": {**REF, "fields": ["a", "b", "c"]}},
     "stages[0] (rm).recentre_data.fields must be [query, reference_response] or [sequence]"),
    ({"kind": "sft", "recentre": "reference_mean", "recentre_data": REF}, "(reward_model stages only"),
])
def test_bad_recentre_options_exit_2_with_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"name": "t", "out": str(tmp_path / "runs"),
                                                            "stages": [{**BASE, **extra}]}))
    assert main(["llm", "pipeline", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("n, batch", [(50, 16), (33, 16), (16, 16), (5, 4)])
def test_each_process_runs_the_same_number_of_forward_passes_and_the_sums_are_everyones(n, batch, monkeypatch):
    """Across W = 3 processes (their shares computed one after another, the gather a sum) every process runs
    ceil(n / (W·batch)) forward passes — ZeRO-3's forwards are collective, so a process with fewer would hang
    the others — and the rows scored are each of the n rows exactly once: the mean of one process alone."""
    import testbed.llm.rm as rm_mod

    model = load_score_model({"name": "tiny:gpt2", "hidden": 32, "layers": 2, "heads": 2, "seed": 1}, PAD, seed=2)
    q, r = reference_rows(n, seed=3)
    ids = torch.cat([q, r], 1)
    alone = recentre(model, ids, PAD, batch=batch)["recentre_mean_before"]
    model.config.score_offset = 0.0
    real, passes, shares = rm_mod.scores, [], []

    class Acc:  # process `index` of 3: its share is recorded; the others' part of the gather is a stand-in row
        num_processes = 3

        def gather(self, t):
            shares.append(t)
            return torch.cat([t, torch.tensor([[0.0, 1.0]], dtype=t.dtype)])

    def counted(m, rows, pad):
        passes[-1] += 1
        return real(m, rows, pad)

    monkeypatch.setattr(rm_mod, "scores", counted)
    for index in range(3):
        acc, offset = Acc(), model.config.score_offset
        acc.process_index = index
        passes.append(0)
        recentre(model, ids, PAD, batch=batch, acc=acc)
        model.config.score_offset = offset
    assert passes == [-(-n // (3 * batch))] * 3
    total = torch.cat(shares).sum(0)
    assert float(total[1]) == n
    assert float(total[0] / total[1]) == pytest.approx(alone, abs=1e-12)
