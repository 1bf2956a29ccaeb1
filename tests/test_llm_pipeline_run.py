"""`testbed llm pipeline DIR` runs the chain: SFT -> reward model (and a held-out judge) -> REBEL -> evaluation, on
tiny models built from configs and token data built here (the TL;DR data set's pre-tokenised layout: left-padded
queries, right-padded responses ending in EOS, right-padded query+response sequences)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import yaml  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402

PAD, EOS = 0, 1
WORD = {w: i + 3 for i, w in enumerate(("good", "bad", "red", "blue", "cat", "dog", "sun", "moon", "one", "two", "up", "down"))}
Q, R = 4, 4  # query and response columns
SFT_MARGIN = 0.5  # held-out cross-entropy (nats per token) drops by at least this much
RM_ACCURACY = 0.95  # held-out pairwise accuracy on the separable preference set


def _query(rng):
    return [WORD[w] for w in rng.choice(["red", "blue", "cat", "dog"], size=rng.integers(2, Q + 1))]


def _right(ids, n):
    return (ids + [PAD] * n)[:n]


def make_data(tmp: Path, seed: int = 0) -> None:
    """SFT rows (the reference response: the query's first word, "good", EOS) and preference pairs (chosen
    "good good", rejected "bad bad"): the layout of the official pre-processed TL;DR fields."""
    rng = np.random.default_rng(seed)
    sft, pairs = [], []
    for _ in range(320):
        q = _query(rng)
        ref = [q[0], WORD["good"], EOS]
        sft.append({"query_token": [PAD] * (Q - len(q)) + q, "reference_response_token": _right(ref, R),
                    "query_reference_response_token": _right(q + ref, Q + R)})
        c, r = q + [WORD["good"]] * 2 + [EOS], q + [WORD["bad"]] * 2 + [EOS]
        pairs.append({"query_chosen_token": _right(c, Q + R), "query_rejected_token": _right(r, Q + R)})
    for name, rows in (("sft_train", sft[:192]), ("sft_valid", sft[192:256]), ("eval", sft[256:]),
                       ("pairs_train", pairs[:192]), ("pairs_valid", pairs[192:256]), ("judge_pairs", pairs[256:])):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


TRAIN = {"lr": 1.0e-2, "adam_eps": 1.0e-5, "scheduler": "cosine", "epochs": 3, "per_device_batch": 8, "grad_accum": 2,
         "processes": 1, "seq": Q + R}
MODEL = {"name": "tiny:gpt2", "hidden": 32, "layers": 2, "heads": 2, "seed": 0}


def pipeline(tmp: Path) -> Path:
    make_data(tmp)
    rebel = toy_spec({"name": "rebel", "eta": 1.0}, iterations=3, save=True, eval_every=3)
    rebel["model"] = {"from": "sft"}
    rebel["reward"] = {"from": "rm"}
    stages = [
        {"name": "sft", "kind": "sft", "model": MODEL, "seed": 3, "train": TRAIN,
         "data": {"file": "sft_train.jsonl", "fields": ["query_reference_response_token"]},
         "eval_data": {"file": "sft_valid.jsonl", "fields": ["query_token", "reference_response_token"]}},
        {"name": "rm", "kind": "reward_model", "model": {"from": "sft"}, "seed": 4, "train": TRAIN,
         "data": {"file": "pairs_train.jsonl", "fields": ["query_chosen_token", "query_rejected_token"]},
         "eval_data": {"file": "pairs_valid.jsonl", "fields": ["query_chosen_token", "query_rejected_token"]}},
        {"name": "judge", "kind": "reward_model", "model": {"from": "sft"}, "seed": 5, "train": {**TRAIN, "epochs": 2},
         "data": {"file": "judge_pairs.jsonl", "fields": ["query_chosen_token", "query_rejected_token"]}},
        {"name": "rebel", "kind": "lm", "spec": rebel},
        {"name": "eval", "kind": "eval", "policies": ["rebel", "sft"], "reference": "sft", "reward": "rm",
         "judge": {"from": "judge"}, "per_device_batch": 16, "temperature": 1.0, "max_new_tokens": R,
         "data": {"file": "eval.jsonl", "fields": ["query_token", "reference_response_token"]}},
        {"name": "eval_module", "kind": "eval", "policies": ["rebel"], "reference": "sft", "reward": "rm",
         "judge": {"module": "llm_helpers:prefers_good"}, "per_device_batch": 16, "temperature": 1.0,
         "max_new_tokens": R, "data": {"file": "eval.jsonl", "fields": ["query_token", "reference_response_token"]}},
    ]
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump({"name": "toy", "out": str(tmp / "runs"), "stages": stages}))
    return tmp


def _metrics(d: Path) -> list[dict]:
    with open(d / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _seq_score(model, ids: list[int]) -> float:
    """An independent reward: the classifier's logit at the last token of one unpadded sequence."""
    x = torch.tensor([ids])
    with torch.no_grad():
        return float(model(input_ids=x).logits[0, 0])


def _seq_kl(pol, ref, q: list[int], y: list[int], T: float) -> float:
    """Σ ln π − ln π_ref over the response's tokens, the pad token excluded (it is never sampled)."""
    x = torch.tensor([q + y])
    with torch.no_grad():
        la, lb = (m(input_ids=x).logits[0, len(q) - 1:-1].double() / T for m in (pol, ref))
        la[:, PAD] = lb[:, PAD] = -torch.inf
        a, b = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
    idx = torch.tensor(y)[:, None]
    return float((a.gather(1, idx) - b.gather(1, idx)).sum())


def test_the_toy_pipeline_runs_end_to_end(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    import testbed.llm.train as train_mod

    folder = pipeline(tmp_path)
    seen = {}
    real_build = train_mod.build

    def spy(spec, *a, **kw):  # the REBEL stage's policy and reward as built, before any update
        ctx, algo = real_build(spec, *a, **kw)
        seen["policy"] = {k: v.clone() for k, v in ctx.accelerator.unwrap_model(ctx.policy.model).state_dict().items()}
        seen["reward"] = ctx.reward
        return ctx, algo

    monkeypatch.setattr(train_mod, "build", spy)
    import testbed.llm.distributed as dist
    import testbed.llm.sft as sft_mod

    prepared, real_train_stage = [], sft_mod.train_stage

    def counting(st, acc, *a, **kw):  # what the shared Accelerator still holds after each SFT / RM stage
        out = real_train_stage(st, acc, *a, **kw)
        prepared.append((len(acc._models), len(acc._optimizers)))
        return out

    monkeypatch.setattr(sft_mod, "train_stage", counting)
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    assert prepared == [(0, 0)] * 3 and dist._STATE["acc"] is not None  # sft, rm, judge: each released its model
    runs = tmp_path / "runs"
    sft_dir, rm_dir = runs / "sft" / "checkpoints" / "sft-0-s3", runs / "rm" / "checkpoints" / "reward_model-0-s4"

    # the REBEL stage starts from the SFT stage's saved weights and is scored by the RM stage's model
    sft = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    saved = sft.state_dict()
    assert set(seen["policy"]) == set(saved)
    assert all(torch.equal(seen["policy"][k], saved[k]) for k in saved)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    used = seen["reward"].model.state_dict()
    assert all(torch.equal(used[k], v) for k, v in rm.state_dict().items())
    assert not torch.equal(rm.score.weight, AutoModelForSequenceClassification.from_pretrained(
        runs / "judge" / "checkpoints" / "reward_model-0-s5").score.weight)

    # SFT lowers the held-out cross-entropy; the RM ranks the separable held-out pairs
    s = json.loads((runs / "sft" / "meta.json").read_text())["summary"]
    assert s["heldout_ce_after"] <= s["heldout_ce_before"] - SFT_MARGIN, s
    r = json.loads((runs / "rm" / "meta.json").read_text())["summary"]
    assert r["heldout_accuracy_after"] >= RM_ACCURACY, r
    assert len(_metrics(runs / "sft")) == 1 + 3 * (192 // 16)  # official: rows // global batch updates per epoch

    # the evaluation's numbers equal an independent recomputation from the saved models and samples
    pol = AutoModelForCausalLM.from_pretrained(runs / "rebel" / "checkpoints" / "rebel-0-s0").eval()
    judge = AutoModelForSequenceClassification.from_pretrained(runs / "judge" / "checkpoints" / "reward_model-0-s5").eval()
    rows = {m["run_id"]: m for m in _metrics(runs / "eval")}
    for name, model in (("rebel", pol), ("sft", sft)):
        recs = [json.loads(x) for x in (runs / "eval" / "samples" / f"{name}.jsonl").read_text().splitlines()]
        assert len(recs) == 64
        score = [_seq_score(rm, c["query"] + c["response"]) for c in recs]
        kl = [_seq_kl(model, sft, c["query"], c["response"], 1.0) for c in recs]
        ref = [c["reference"][:c["reference"].index(EOS) + 1] for c in recs]
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in
                zip([_seq_score(judge, c["query"] + c["response"]) for c in recs],
                    [_seq_score(judge, c["query"] + y) for c, y in zip(recs, ref)])]
        assert float(rows[name]["eval/rm_score"]) == pytest.approx(np.mean(score), abs=1e-5)
        assert float(rows[name]["eval/kl"]) == pytest.approx(np.mean(kl), abs=1e-4)
        assert float(rows[name]["eval/win_rate"]) == pytest.approx(np.mean(wins), abs=1e-9)
    assert float(rows["sft"]["eval/kl"]) == pytest.approx(0.0, abs=1e-6)  # the reference against itself

    recs = [json.loads(x) for x in (runs / "eval_module" / "samples" / "rebel.jsonl").read_text().splitlines()]
    good = [(c["response"].count(WORD["good"]), c["reference"].count(WORD["good"])) for c in recs]
    want = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in good])
    assert float(_metrics(runs / "eval_module")[0]["eval/win_rate"]) == pytest.approx(want, abs=1e-9)

    # resumable per stage: a finished stage is not run again
    calls = []
    monkeypatch.setattr("testbed.llm.sft.train_stage", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(train_mod, "build", lambda *a, **k: calls.append(1))
    before = (runs / "eval" / "metrics.csv").read_bytes()
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    assert not calls and (runs / "eval" / "metrics.csv").read_bytes() == before


def test_a_bad_checkpoint_every_is_one_line(tmp_path, capsys):
    folder = pipeline(tmp_path)
    raw = yaml.safe_load((folder / "pipeline.yaml").read_text())
    for bad in ("x", -1, 1.5):
        (folder / "pipeline.yaml").write_text(yaml.safe_dump({**raw, "checkpoint_every": bad}))
        assert main(["llm", "pipeline", str(folder), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pipeline.checkpoint_every must be a non-negative integer" in err[0], err
        assert not (tmp_path / "runs").exists()



def _from(i: int, key: str, src: str):
    def edit(stages: list) -> None:
        (stages[i]["spec"] if stages[i]["kind"] == "lm" else stages[i])[key] = {"from": src}
    return edit


def _like_rebel(spec: dict):
    def edit(stages: list) -> None:
        stages.insert(4, {"name": "again", "kind": "lm", "like": "rebel", "spec": spec})
    return edit


@pytest.mark.parametrize("edit, message", [
    (_from(3, "reward", "sft"), "stages[3] (rebel).spec.reward.from: stage 'sft' is a sft stage, not a reward_model stage"),
    (_like_rebel({"reward": {"from": "rebel"}}),
     "stages[4] (again).spec.reward.from: stage 'rebel' is a lm stage, not a reward_model stage"),
    (_from(3, "model", "rm"), "stages[3] (rebel).spec.model.from: stage 'rm' is a reward_model stage, not a policy"),
    (_like_rebel({"model": {"from": "judge"}}),
     "stages[4] (again).spec.model.from: stage 'judge' is a reward_model stage, not a policy"),
    (_from(4, "judge", "sft"), "stages[4] (eval).judge.from: stage 'sft' is a sft stage, not a reward_model stage"),
], ids=["reward-from-sft", "reward-from-lm", "model-from-rm", "like-model-from-rm", "judge-from-sft"])
def test_a_from_of_the_wrong_stage_kind_is_one_line(tmp_path, capsys, edit, message):
    """An lm stage's reward from an sft stage would train against a random score head; its model from an rm
    stage would load the policy from a reward model: refused before anything runs, as the eval stage's are."""
    folder = pipeline(tmp_path)
    raw = yaml.safe_load((folder / "pipeline.yaml").read_text())
    edit(raw["stages"])
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    for args in (["--dry-run"], ["--quiet"]):
        assert main(["llm", "pipeline", str(folder), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def _short(folder: Path, n: int) -> dict:
    """The toy pipeline's first n stages, one epoch each (sft, rm, judge, rebel, ...)."""
    raw = yaml.safe_load((folder / "pipeline.yaml").read_text())
    raw["stages"] = raw["stages"][:n]
    for s in raw["stages"]:
        if "train" in s and "epochs" in s["train"]:
            s["train"]["epochs"] = 1
    return raw


@pytest.mark.parametrize("edit, field", [
    (lambda st: st[0]["train"].__setitem__("lr", 2e-2), "train.lr (saved 0.01, now 0.02)"),
    (lambda st: st[0].__setitem__("seed", 9), "seed (saved 3, now 9)"),
    (lambda st: st[3]["spec"]["algorithms"][0].__setitem__("eta", 2.0), "algorithms[0].eta (saved 1.0, now 2.0)"),
], ids=["sft-lr", "sft-seed", "rebel-eta"])
def test_a_finished_stage_with_another_config_is_refused(tmp_path, capsys, edit, field):
    """Editing a finished stage's lr / seed / eta and rerunning printed `done` and kept the old results."""
    folder = pipeline(tmp_path)
    raw = _short(folder, 4)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0  # unchanged: every stage reused
    assert capsys.readouterr().err.count(": done (") == 4
    edit(raw["stages"])
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = raw["stages"][0 if field != "algorithms[0].eta (saved 1.0, now 2.0)" else 3]["name"]
    assert len(err) == 1 and f"stage {name}: the finished" in err[0] and field in err[0] and "delete" in err[0], err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before


def test_a_finished_stage_made_from_another_run_of_its_upstream_is_refused(tmp_path, capsys):
    """Deleting a stage's folder (to rerun it) left the finished stages that read it in place, reused as `done` though
    they were made from the old run: now they are refused before anything runs, naming the stage to delete; and a
    stage whose upstream was rerun since with other results (made_from.json holds the digest of the meta.json it read:
    the sha256 of that stage's config and metrics) is refused too; an identical rerun is the same content."""
    import shutil

    folder = pipeline(tmp_path)
    raw = _short(folder, 4)  # sft, rm (reads sft), judge (reads sft), rebel (reads sft and rm)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    made = json.loads((runs / "made_from.json").read_text())
    assert made == {"sft": {}, **{n: {"sft": made["rm"]["sft"]} for n in ("rm", "judge")},
                    "rebel": {"sft": made["rm"]["sft"], "rm": made["rebel"]["rm"]}}
    meta = json.loads((runs / "sft" / "meta.json").read_text())  # the same results on another commit and versions
    (runs / "sft" / "meta.json").write_text(json.dumps({**meta, "git_commit": "0" * 40, "versions": {}}))
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    shutil.rmtree(runs / "rm")
    capsys.readouterr()
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage rebel: the finished" in err[0] and "reads stage rm, which is not finished" in err[0], err
    assert not (runs / "rm").exists()  # refused before anything ran
    only = {**raw, "stages": raw["stages"][:2]}  # rm again, alone, as before: the same config and metrics
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(only))
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0  # rebel read that very content: reused
    assert json.loads((runs / "made_from.json").read_text()) == made
    shutil.rmtree(runs / "rm")  # rm again with another learning rate (in the pipeline too): other metrics, same path
    raw["stages"][1]["train"] = {**raw["stages"][1]["train"], "lr": 2e-2}
    (folder / "pipeline.yaml").write_text(yaml.safe_dump({**raw, "stages": raw["stages"][:2]}))
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage rebel: the finished" in err[0] and "earlier run of stage rm" in err[0], err
    shutil.rmtree(runs / "rebel")  # as the message says: rebel runs again, from the new rm
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 0
    assert json.loads((runs / "made_from.json").read_text())["rebel"]["rm"] != made["rebel"]["rm"]


def test_a_missing_upstream_model_is_one_line(tmp_path, capsys):
    """An lm stage that saves no model (train.save false) read by a later stage: exit 2 before that stage starts."""
    folder = pipeline(tmp_path)
    raw = _short(folder, 6)
    raw["stages"][3]["spec"]["train"]["save"] = False
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "pipeline", str(folder), "--quiet"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("testbed:")]  # after the stages' progress
    assert len(err) == 1 and "stage eval: reads stage rebel's model" in err[0] and "does not exist" in err[0], err
    assert not (tmp_path / "runs" / "eval").exists()


def _set(path: str, value):
    """An edit of the toy pipeline: ``path`` like ``stages.4.policies`` (``.`` between keys and list indices)."""
    def edit(raw: dict) -> None:
        *head, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = raw
        for k in head:
            node = node[k]
        node[last] = value
    return edit


def _ds_file(text: str):
    def edit(raw: dict, folder: Path) -> None:
        (folder / "ds.json").write_text(text)
        raw["stages"][0]["deepspeed"] = "ds.json"
    return edit


OOV = [5, 6, 70000, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("edit, message, dry", [
    (_set("stages.1.model", {"from": ["sft"]}),
     "stages[1] (rm).model.from must be the name of an earlier stage (got ['sft'])", 1),
    (_set("stages.3.spec.reward", {"from": ["rm"]}), "stages[3] (rebel).spec.reward.from must be the name of an earlier", 1),
    (_set("stages.4.policies", [["rebel"]]), "stages[4] (eval).policies[0].from must be the name of an earlier stage", 1),
    (_set("stages.4.reference", ["sft"]), "stages[4] (eval).reference.from must be the name of an earlier stage", 1),
    (lambda raw: raw["stages"].insert(4, {"name": "x", "kind": "lm", "like": ["rebel"], "spec": {}}),
     "stages[4] (x).like: ['rebel'] is not an earlier lm stage", 1),
    (_set("out", 5), "pipeline.out must be a folder path (got 5)", 1),
    (_set("stages.0.deepspeed", 5), "stages[0] (sft).deepspeed must be the path of a DeepSpeed JSON config (got 5)", 1),
    (_ds_file('{"zero_optimization": {"stage": "x"}}'), "(sft).deepspeed: zero_optimization.stage must be 0, 1, 2 or 3", 1),
    (_ds_file('{"zero_optimization": [1]}'), "(sft).deepspeed: zero_optimization must be a JSON object", 1),
    (_ds_file('{"bf16": true}'), "(sft).deepspeed: bf16 must be a JSON object", 1),
    (_ds_file("[1, 2]"), "must hold a JSON object (a DeepSpeed config)", 1),
    (_set("stages.0.name", "a/b"), "stages[0] (a/b).name must be a folder name", 1),
    (_set("stages.2.name", ".."), "stages[2] (..).name must be a folder name", 1),
    (_set("stages.1.eval_data.fields", ["query_chosen_token"]),
     "stages[1] (rm).eval_data.fields must be [chosen, rejected] sequences (got ['query_chosen_token'])", 1),
    (_set("stages.0.data.file", "oov.jsonl"), "stage sft.data.fields: 'query_reference_response_token' holds token id "
     "70000, outside the model's vocabulary [0, 15)", 0),
    (_set("stages.0.data.file", "neg.jsonl"), "holds token id -3, outside the model's vocabulary [0, 15)", 0),
], ids=["model-from-list", "reward-from-list", "policies-list", "reference-list", "like-list", "out-int",
        "deepspeed-int", "ds-stage-str", "ds-zero-list", "ds-bf16-bool", "ds-list", "name-slash", "name-dotdot",
        "rm-eval-data-1-field", "oov-token", "negative-token"])
def test_bad_inputs_are_one_line_naming_the_field(tmp_path, capsys, edit, message, dry):
    """Each ended in an internal error (rc 1: TypeError, AttributeError, ValueError, IndexError)."""
    folder = pipeline(tmp_path)
    for name, ids in (("oov", OOV), ("neg", [5, 6, -3, 1, 0, 0, 0, 0])):
        (folder / f"{name}.jsonl").write_text(json.dumps({"query_reference_response_token": ids}) + "\n")
    raw = yaml.safe_load((folder / "pipeline.yaml").read_text())
    if not dry:
        raw["stages"] = raw["stages"][:1]
    edit(raw, folder) if edit.__code__.co_argcount == 2 else edit(raw)
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "pipeline", str(folder), "--dry-run" if dry else "--quiet"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("testbed:")]
    assert len(err) == 1 and message in err[0], err
