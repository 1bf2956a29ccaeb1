"""`testbed llm pipeline DIR --dry-run`: the paper's chained TL;DR stages (SFT -> RM -> RL -> eval), offline."""

import copy
from pathlib import Path

import pytest
import yaml
from llm_helpers import toy_spec

pytest.importorskip("transformers")

from testbed.cli import main  # noqa: E402
from testbed.llm.pipeline import load_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "experiments" / "llm").glob("tldr_pythia_*/pipeline.yaml"))
COUNTS = {"1.4b": 1_414_647_808, "2.8b": 2_775_208_960, "6.9b": 6_857_302_016}  # EleutherAI's published counts


def test_three_sizes_have_a_pipeline():
    assert [p.parent.name for p in PIPELINES] == ["tldr_pythia_1.4b", "tldr_pythia_2.8b", "tldr_pythia_6.9b"]


@pytest.mark.parametrize("folder", [p.parent for p in PIPELINES], ids=lambda p: p.name)
def test_rl_stages_start_from_the_sft_output_and_score_with_the_rm_stage(folder, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pl = load_pipeline(folder)
    st = pl["stages"]
    assert list(st) == ["sft", "rm", "judge", "rebel", "ppo", "dpo", "rloo", "eval"]
    sft_out = str(pl["out"] / "sft" / "checkpoints" / "sft-0-s555134")
    rm_out = str(pl["out"] / "rm" / "checkpoints" / "reward_model-0-s66613")
    assert st["rm"]["model"]["path"] == sft_out  # the RM is trained from the SFT policy (official rm.py)
    for name in ("rebel", "ppo", "dpo", "rloo"):
        spec = st[name]["lm_spec"]
        assert spec.model["path"] == sft_out, name
        assert spec.reward == {"kind": "model", "name": st["sft"]["model"]["name"], "path": rm_out}, name
        assert [a for a, _, _ in spec.algorithms] == [name]
    reb = st["rebel"]["lm_spec"]
    assert (reb.algorithms[0][1].eta, reb.algorithms[0][1].beta, reb.algorithms[0][1].epochs) == (1.0, 0.05, 4)
    assert (reb.train.lr, reb.train.adam_eps, reb.train.max_new_tokens, reb.lora["r"]) == (3e-6, 1e-5, 53, 1024)
    assert st["sft"]["train"]["lr"] == st["rm"]["train"]["lr"] == 3e-6 and st["rm"]["seed"] == 66613
    assert main(["llm", "pipeline", str(folder), "--dry-run"]) == 0
    out = capsys.readouterr().out
    size = folder.name.split("_")[-1]
    assert f"{COUNTS[size]:,} parameters" in out
    assert "stage rebel (lm, rebel; reads rm/, sft/)" in out and "(from stage rm)" in out
    assert out.count("memory per GPU:") == 8 and "nothing downloaded" in out
    # the eval stage loads one model at a time: its memory is the largest model's weights (the float32 reference
    # policy, 4 bytes a parameter), not the four models' sum, so it fits one 80 GB GPU at every size
    evals = out.split("stage eval")[1]
    gib = float(evals.split("memory per GPU: ")[1].split(" GiB")[0])
    assert gib == pytest.approx(4 * COUNTS[size] / 2**30, abs=0.05) and gib < 74.5


def _tiny_pipeline(tmp_path: Path, stages: list) -> Path:
    (tmp_path / "p").mkdir(exist_ok=True)
    (tmp_path / "p" / "pipeline.yaml").write_text(yaml.safe_dump({"name": "tiny", "out": str(tmp_path / "runs"),
                                                                  "stages": stages}))
    return tmp_path / "p"


def test_a_stage_reads_the_folder_the_previous_stage_writes(tmp_path):
    """The path a `from:` resolves to is where `testbed llm run` saves the model: run stage a, then stage b's
    policy loads from a's output folder (its config.json exists there)."""
    a = toy_spec({"name": "rebel", "eta": 1.0}, iterations=1)
    a["train"]["save"] = True
    b = copy.deepcopy(a)
    b["model"] = {"from": "a"}
    folder = _tiny_pipeline(tmp_path, [{"name": "a", "kind": "lm", "spec": a}, {"name": "b", "kind": "lm", "spec": b}])
    pl = load_pipeline(folder)
    path = Path(pl["stages"]["b"]["lm_spec"].model["path"])
    assert not path.exists()
    spec_a = tmp_path / "a.yaml"
    spec_a.write_text(yaml.safe_dump(a))
    assert main(["llm", "run", str(spec_a), "--out", str(tmp_path / "runs" / "a"), "--quiet"]) == 0
    assert (path / "config.json").is_file()
    from testbed.llm.models import count_parameters
    assert count_parameters(pl["stages"]["b"]["lm_spec"].model) == count_parameters(a["model"])


@pytest.mark.parametrize("stages, message", [
    ([{"name": "b", "kind": "lm", "spec": {"model": {"from": "a"}}}],
     "stages[0] (b).spec.model.from: 'a' is not an earlier stage"),
    ([{"name": "a", "kind": "train"}], "stages[0] (a).kind must be one of sft, reward_model, lm, eval"),
    ([{"name": "s", "kind": "sft", "model": "EleutherAI/pythia-160m-deduped", "data": {"hf_dataset": "x/y", "fields": []}}],
     "stages[0] (s).data.fields must be a list"),
    ([{"name": "s", "kind": "sft", "model": "EleutherAI/pythia-160m-deduped",
       "data": {"hf_dataset": "x/y", "fields": ["query_token"]}, "train": {"lr": 1e-5}}], "missing ['adam_eps'"),
    ([{"name": "s", "kind": "sft", "model": "bad name!", "data": {"hf_dataset": "x/y", "fields": ["f"]}}],
     "stages[0] (s).model.name 'bad name!' is not a hub model id"),
    ([{"name": "a", "kind": "lm", "spec": toy_spec({"name": "rebel", "eta": 1.0}, iterations=1)},
      {"name": "e", "kind": "eval", "policies": ["a", "a"], "reference": "a", "reward": "a"}],
     "stages[1] (e).policies[1]: 'a' is listed twice"),
])
def test_bad_pipelines_exit_2_with_one_line(tmp_path, capsys, stages, message):
    folder = _tiny_pipeline(tmp_path, stages)
    assert main(["llm", "pipeline", str(folder), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_folder_without_pipeline_yaml_exits_2_with_or_without_dry_run(tmp_path, capsys):
    assert main(["llm", "pipeline", str(tmp_path), "--dry-run"]) == 2
    assert "no pipeline.yaml" in capsys.readouterr().err
    assert main(["llm", "pipeline", str(tmp_path)]) == 2
    assert "no pipeline.yaml" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_count_limits_an_hf_dataset_split(monkeypatch):
    """`count:` of an hf_dataset prompt set keeps its first rows (a fake `datasets` module: no download)."""
    import sys
    import types

    class Split:
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def select(self, idx):
            return Split([self.rows[i] for i in idx])

        def __getitem__(self, field):
            return [r[field] for r in self.rows]

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split: Split([{"query": f"q{i}"} for i in range(10)])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    from testbed.llm.task import make_prompts
    assert make_prompts({"hf_dataset": "a/b", "split": "validation", "field": "query", "count": 3}) == ["q0", "q1", "q2"]
    assert len(make_prompts({"hf_dataset": "a/b", "field": "query", "count": 30})) == 10
    assert len(make_prompts({"hf_dataset": "a/b", "field": "query"})) == 10


def test_a_like_stage_resolves_the_folder_its_run_writes(tmp_path):
    """A `like:` stage inherits its base's keys (seeds, algorithms): `{from: S}` and the eval stage read
    <out>/S/checkpoints/<first algorithm>-0-s<first inherited seed>, the folder `testbed llm run` writes."""
    from testbed.llm.pipeline import stage_model_path
    from testbed.llm.train import run_lm_spec
    a = toy_spec({"name": "rebel", "eta": 1.0}, seeds=(7,), iterations=1, save=True)
    stages = [{"name": "a", "kind": "lm", "spec": a},
              {"name": "b", "kind": "lm", "like": "a", "spec": {"algorithms": [{"name": "rloo", "k": 2}]}},
              {"name": "c", "kind": "lm", "like": "a", "spec": {"seeds": [3]}},  # algorithms inherited
              {"name": "d", "kind": "lm", "like": "a", "spec": {"model": {"from": "b"}}}]
    pl = load_pipeline(_tiny_pipeline(tmp_path, stages))
    st, out = pl["stages"], pl["out"]
    assert stage_model_path(out, st["b"]) == str(out / "b" / "checkpoints" / "rloo-0-s7")
    assert stage_model_path(out, st["c"]) == str(out / "c" / "checkpoints" / "rebel-0-s3")
    path = st["d"]["lm_spec"].model["path"]
    assert path == stage_model_path(out, st["b"]) and not Path(path).exists()
    run_lm_spec(st["b"]["lm_spec"], out / "b", progress=False)
    assert (Path(path) / "config.json").is_file()


@pytest.mark.parametrize("folder", [p.parent for p in PIPELINES], ids=lambda p: p.name)
def test_the_shipped_like_stages_resolve_their_inherited_seed(folder, monkeypatch):
    from testbed.llm.pipeline import stage_model_path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pl = load_pipeline(folder)
    st, out = pl["stages"], pl["out"]
    seed = st["rebel"]["raw_spec"]["seeds"][0]
    for name in ("rebel", "ppo", "dpo", "rloo"):
        assert stage_model_path(out, st[name]) == str(out / name / "checkpoints" / f"{name}-0-s{seed}"), name
