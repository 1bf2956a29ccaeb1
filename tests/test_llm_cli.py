"""`testbed llm run`: outputs, dry runs of the paper-scale specs, bad specs, and 2-process data parallelism."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import yaml  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER_SPECS = sorted((ROOT / "experiments" / "llm").glob("tldr_pythia_*.yaml"))


def write(tmp_path, raw, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def read_rows(d):
    from testbed.results import read_metrics
    return read_metrics(d)


def test_run_writes_metrics_samples_checkpoint_and_meta(tmp_path, capsys):
    raw = toy_spec({"name": "rebel"}, iterations=2, eval_every=1, save=True)
    spec = write(tmp_path, raw)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2 if before != 2 else 3)
    try:  # the run uses one thread and gives the caller's count back (in-process runs leave no trace)
        assert main(["llm", "run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
        assert torch.get_num_threads() == (2 if before != 2 else 3)
    finally:
        torch.set_num_threads(before)
    out = tmp_path / "run"
    rows = read_rows(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for col in ("run_id", "reward", "kl_ref", "loss", "samples", "objective/scores", "objective/kl", "objective/entropy",
                "objective/rlhf_reward", "val/num_eos_tokens", "loss/policy", "eps", "tokens_per_s", "peak_memory_mb"):
        assert col in rows[0]
    assert rows[0]["objective/scores"] is None and rows[0]["loss"] is None  # missing values stay empty
    assert rows[2]["samples"] == 2 * 2 * 32
    assert rows[2]["peak_memory_mb"] > 0 and rows[2]["tokens_per_s"] > 0  # measured: from timings.json
    samples = sorted((out / "samples").rglob("*.jsonl"))
    assert [p.name for p in samples] == ["iter_000000.jsonl", "iter_000001.jsonl", "iter_000002.jsonl"]
    first = json.loads(samples[0].read_text().splitlines()[0])
    assert {"prompt", "response", "score", "iteration"} <= set(first)
    ckpt = next((out / "checkpoints").iterdir())
    assert (ckpt / "config.json").is_file() and (ckpt / "tokenizer.json").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["processes"] == 1 and "transformers" in meta["versions"]
    assert main(["llm", "run", str(spec), "--out", str(out), "--quiet"]) == 2  # refuses an existing folder
    assert "already exists" in capsys.readouterr().err


def test_same_lm_spec_and_seed_give_byte_identical_run_files(tmp_path):
    """The determinism rule of every run folder: config.yaml, metrics.csv and meta.json are the same bytes;
    what is measured (wall time, throughput, memory) lives in timings.json only."""
    spec = write(tmp_path, toy_spec({"name": "rebel"}, iterations=2, eval_every=1))
    for name in ("a", "b"):
        assert main(["llm", "run", str(spec), "--out", str(tmp_path / name), "--quiet"]) == 0
    for f in ("config.yaml", "metrics.csv", "meta.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    header = (tmp_path / "a" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert not {"wall_time", "tokens_per_s", "eps", "peak_memory_mb"} & set(header)
    timings = json.loads((tmp_path / "a" / "timings.json").read_text())
    assert len(timings["peak_memory_mb"]["rebel-0-s0"]) == 3 and timings["seconds"]["rebel-0-s0"] > 0


@pytest.mark.parametrize("spec", PAPER_SPECS, ids=[p.stem for p in PAPER_SPECS])
def test_dry_run_of_every_paper_scale_spec(spec, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["llm", "run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    rebel = next(ln for ln in lines if ln.strip().startswith("rebel: models held"))
    ppo = next(ln for ln in lines if ln.strip().startswith("ppo: models held"))
    assert "policy" in rebel and "reward model" in rebel and "critic" not in rebel
    assert "policy" in ppo and "critic" in ppo and "reward model" in ppo
    assert "ZeRO-2" in out and "nothing downloaded" in out
    size = spec.stem.split("_")[-1]
    want = {"1.4b": "1,414,647,808", "2.8b": "2,775,208,960", "6.9b": "6,857,302,016"}[size]  # EleutherAI's counts
    assert want in out


def test_paper_specs_cover_the_three_sizes():
    assert sorted(p.stem for p in PAPER_SPECS) == ["tldr_pythia_1.4b", "tldr_pythia_2.8b", "tldr_pythia_6.9b"]


def _bad(tmp_path, capsys, raw, message, files=None):
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    spec = write(tmp_path, raw)
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "o").exists()


def test_any_hub_name_is_accepted_but_a_real_run_offline_needs_its_local_copy(tmp_path, capsys):
    raw = toy_spec({"name": "rebel"})
    raw["model"] = {"name": "acme/not-a-model-7b"}
    _bad(tmp_path, capsys, raw, "model: 'acme/not-a-model-7b' has no local copy and the hub is offline")


def test_a_model_name_that_is_not_a_hub_id(tmp_path, capsys):
    raw = toy_spec({"name": "rebel"})
    raw["model"] = {"name": "acme/not a model"}
    _bad(tmp_path, capsys, raw, "model.name 'acme/not a model' is not a hub model id")


@pytest.mark.parametrize("eta", [0, -1.0])
def test_eta_must_be_positive(tmp_path, capsys, eta):
    _bad(tmp_path, capsys, toy_spec({"name": "rebel", "eta": eta}), "eta must be a positive number")


def test_batch_not_divisible_across_processes(tmp_path, capsys):
    raw = toy_spec({"name": "rebel"}, batch=33)
    raw["accelerate"] = {"num_processes": 2}
    _bad(tmp_path, capsys, raw, "train.batch = 33 is not divisible across 2 processes")


def test_dataset_missing_the_chosen_column(tmp_path, capsys):
    raw = toy_spec({"name": "dpo", "mode": "offline", "dataset": "pairs.jsonl"})
    _bad(tmp_path, capsys, raw, "missing column(s) ['chosen']",
         files={"pairs.jsonl": json.dumps({"prompt": "good cat", "rejected": "bad"}) + "\n"})


@pytest.mark.parametrize("prompts", [["", ""], ["good cat", "", "red"]])
def test_an_empty_prompt_is_refused(tmp_path, capsys, prompts):
    raw = toy_spec({"name": "rebel"})
    raw["prompts"] = raw["eval_prompts"] = {"file": str(tmp_path / "p.jsonl")}
    bad = prompts.index("") + 1
    _bad(tmp_path, capsys, raw, f"prompts (file {str(tmp_path / 'p.jsonl')!r}): prompt {bad} ('') has no tokens",
         files={"p.jsonl": "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)})


def test_an_empty_prompt_in_a_pairs_dataset_is_refused(tmp_path, capsys):
    raw = toy_spec({"name": "dpo", "mode": "offline", "dataset": str(tmp_path / "pairs.jsonl")})
    _bad(tmp_path, capsys, raw, "pairs.jsonl': prompt 1 ('') has no tokens",
         files={"pairs.jsonl": json.dumps({"prompt": "", "chosen": "good", "rejected": "bad"}) + "\n"})


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """DDP over gloo (torchrun + Accelerator(cpu=True)), replicated rollouts: every process samples the
    global batch with the same seed and trains on its half of each minibatch (gradients all-reduced,
    gradient accumulation 2 per process). Metrics must match the 1-process run within 1e-3 relative."""
    raw = toy_spec({"name": "rebel", "epochs": 2}, iterations=3, batch=16, minibatch=8, grad_accum=2,
                   rollouts="replicated", eval_every=3)
    spec = write(tmp_path, raw)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, "-m", "testbed.cli", "llm", "run", str(spec), "--out", str(tmp_path / "one"),
                          "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29517", "-m", "testbed.cli", "llm",
                          "run", str(spec), "--out", str(tmp_path / "two"), "--quiet"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["processes"] == 2
    a, b = read_rows(tmp_path / "one"), read_rows(tmp_path / "two")
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        for col in ("objective/scores", "objective/kl", "objective/entropy", "loss/policy", "eval/scores", "samples"):
            if ra[col] is None:
                assert rb[col] is None
                continue
            x, y = float(ra[col]), float(rb[col])
            assert abs(x - y) <= 1e-3 * max(1.0, abs(x)), (ra["iteration"], col, x, y)
    shutil.rmtree(tmp_path / "one")


def test_dry_run_of_the_cpu_study_spec_needs_no_package(capsys, monkeypatch):
    """The study's model is counted from SmolLM2-135M's config written in the code: the same 134,515,008
    parameters the GGUF file loads to (tests/test_llm_gguf.py), without the package installed."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["llm", "run", str(ROOT / "experiments" / "llm" / "tldr_smollm2.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m: 134,515,008 parameters, full fine-tune" in out
    ppo = next(ln for ln in out.splitlines() if ln.strip().startswith("ppo: models held"))
    assert "critic (134.5M" in ppo
