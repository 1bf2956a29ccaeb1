"""Diffusion runs end to end on a tiny model (8×8 digits, 2 denoising steps): bad specs are one line, exit 2,
nothing written; the same spec and seed give the same metrics bytes; a run killed with SIGKILL and resumed
gives the metrics of an uninterrupted run; the dry run of the paper spec counts Stable Diffusion's parameters
from its configs, offline."""

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

import torch  # noqa: E402
import yaml  # noqa: E402

from testbed.cli import main  # noqa: E402

TIMING = {"wall_time", "peak_memory_mb", "tokens_per_s", "eps"}
ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(tmp_path, **over):
    raw = {"name": "tiny", "kind": "diffusion", "model": {"size": 8, "widths": [8, 16]},
           "pretrain": {"steps": 20, "batch": 32, "cache": str(tmp_path / "cache"), "seed": 0},
           "sampler": {"steps": 2}, "reward": {"kind": "jpeg_compressibility"},
           "algorithms": [{"name": "rebel", "eta": 10.0}, {"name": "ppo", "clip_eps": 0.1, "epochs": 1},
                          {"name": "dpo", "mode": "online", "beta": 0.1, "epochs": 1}],
           "seeds": [0], "train": {"iterations": 3, "batch": 4, "minibatch": 4, "lr": 1e-4, "eval_every": 2,
                                   "eval_prompts": 4}}
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("over, field", [
    ({"reward": {"kind": "sharpness"}}, "reward.kind"),
    ({"sampler": {"steps": 0}}, "sampler.steps"),
    ({"sampler": {"guidance": -1.0}}, "sampler.guidance"),
    ({"model": {"size": 10, "widths": [8, 16, 16]}}, "model.size"),
    ({"algorithms": [{"name": "dpo", "mode": "offline"}]}, "online"),
    ({"algorithms": [{"name": "ppo", "critic": "table"}]}, "critic"),
    ({"algorithms": [{"name": "ppo", "train": {"iterations": 3}}]}, "algorithms[0].train"),
    ({"algorithms": [{"name": "ppo", "train": {"batch": 0}}]}, "algorithms[0].train.batch"),
    ({"model": {"seed": "a"}}, "model.seed must be a non-negative integer"),
    ({"lora": {"r": 2, "alpha": "x"}}, "lora.alpha must be a positive number"),
    ({"lora": {"r": 2, "target_modules": ["nonexistent"]}}, "lora.target_modules: 'nonexistent' names no module"),
    ({"lora": {"r": 2, "target_modules": "conv1"}}, "lora.target_modules must be a non-empty list"),
    ({"sampler": {"steps": 100, "train_timesteps": 100}}, "sampler.steps = 100 must be below"),
    ({"model": {"channels": 3}}, "model.channels = 3 does not match pretrain.data digits"),
    ({"model": {"channels": 3}, "pretrain": {"data": "shapes"}}, "model.channels = 3 does not match pretrain.data shapes"),
    ({"train": {"dtype": "bfloat16"}}, "train.dtype bfloat16 is not supported for the tiny model"),
    ({"train": {"dtype": "float16"}}, "train.dtype float16 needs a GPU"),
    *[({"algorithms": [{"name": "ppo", k: v}]}, f"algorithms[0] (ppo).{k} does not apply to diffusion runs")
      for k, v in (("gamma", 0.9), ("lam", 0.9), ("whiten_rewards", True), ("vf_coef", 0.5), ("value_clip", 0.2))],
    ({"reward": {"kind": "classifier", "steps": 10}}, "reward: unknown key(s) ['steps']"),
    ({"prompts": {"kind": "classes", "bogus": 1}}, "prompts: unknown key(s) ['bogus']"),
    ({"seeds": [0, 0]}, "seeds must be distinct"),
    ({"algorithms": [{"name": "ppo", "prompt_buffer": -1}]}, "algorithms[0] (ppo).prompt_buffer must be a non-negative integer"),
    ({"algorithms": [{"name": "ppo", "prompt_buffer": 2.5}]}, "algorithms[0] (ppo).prompt_buffer must be a non-negative integer"),
    ({"algorithms": [{"name": "ppo", "prompt_buffer": 8, "prompt_min_count": 0}]},
     "algorithms[0] (ppo).prompt_min_count must be a positive integer"),
    ({"algorithms": [{"name": "ppo", "prompt_buffer": 8, "prompt_min_count": 16}]},
     "algorithms[0] (ppo).prompt_min_count 16 exceeds prompt_buffer 8"),
    ({"algorithms": [{"name": "ppo", "prompt_min_count": 8}]},
     "algorithms[0] (ppo).prompt_min_count is not read with prompt_buffer: 0"),
], ids=["unknown-reward", "steps-0", "negative-guidance", "size-not-divisible", "offline-dpo", "bandit-critic",
        "algorithm-train-key", "algorithm-batch-0", "model-seed-str", "lora-alpha-str", "lora-target-missing",
        "lora-targets-not-a-list", "ddim-steps-eq-T", "channels-digits", "channels-shapes", "bfloat16", "float16-cpu",
        "ppo-gamma", "ppo-lam", "ppo-whiten-rewards", "ppo-vf-coef", "ppo-value-clip", "reward-steps", "prompts-key",
        "duplicate-seeds", "ppo-prompt-buffer-negative", "ppo-prompt-buffer-float", "ppo-prompt-min-count-0",
        "ppo-prompt-min-count-above-buffer", "ppo-prompt-min-count-unread"])
def test_bad_specs_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, over, field):
    spec = tiny_spec(tmp_path, **over)
    out = tmp_path / "out"
    assert main(["diffusion", "run", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err
    assert not out.exists() and not (tmp_path / "out.partial").exists() and not (tmp_path / "cache").exists()


def rows(d):
    with open(Path(d) / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def test_same_spec_and_seed_give_the_same_metrics_bytes(tmp_path):
    spec = tiny_spec(tmp_path)
    before = torch.get_num_threads()
    other = 2 if before != 2 else 3
    try:  # each run sets train.threads (1) and gives the caller's count back
        torch.set_num_threads(other)
        for name in ("a", "b"):
            assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / name), "--quiet"]) == 0
            assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
    a, b = (tmp_path / "a" / "metrics.csv").read_bytes(), (tmp_path / "b" / "metrics.csv").read_bytes()
    assert a == b
    r = rows(tmp_path / "a")
    assert {x["algorithm"] for x in r} == {"rebel", "ppo", "dpo"}
    final = [x for x in r if x["iteration"] == "3"]
    assert all(float(x["eval/kl"]) > 0 for x in final), "every algorithm moved the policy off the reference"
    assert all(float(x["eval/kl"]) == 0 for x in r if x["iteration"] == "0")
    assert (tmp_path / "a" / "samples" / "rebel-0-s0.npz").is_file()
    check_study_table(tmp_path)


def test_killed_and_resumed_run_matches_an_uninterrupted_run(tmp_path):
    spec = tiny_spec(tmp_path, seeds=[0, 1], algorithms=[{"name": "rebel", "eta": 10.0}], train={"iterations": 4})
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "diffusion", "run", str(spec), "--out", "out",
                             "--quiet", "--checkpoint-every", "1"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.partial"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill inside the second run, after a checkpoint
        if partial.is_dir() and any(p.suffix == ".done" for p in partial.iterdir()) and \
                any(p.suffix == ".ckpt" for p in partial.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--resume"]) == 0
    assert rows(tmp_path / "out") == rows(tmp_path / "ref")
    assert not partial.exists()
    assert not list(tmp_path.glob(".out.*"))  # the killed run's .out.tmp-PID removed on the resume; no lock left


def test_ppo_with_the_prompt_buffer_interrupted_and_resumed_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """PPO with DDPO's per-prompt stat tracker (buffer 4, min count 2, 8 of 10 digit prompts per iteration): a run
    stopped inside its third update and resumed from the checkpoint of the second gives the rows of an uninterrupted
    run, its buffers restored from the checkpoint (a resumed run with empty buffers gives other losses); without the
    buffer the losses differ, so the buffer is read."""
    from testbed.algorithms.ppo import PPO
    from testbed.training.checkpoint import load_state

    ppo = {"name": "ppo", "clip_eps": 0.1, "epochs": 1, "prompt_buffer": 4, "prompt_min_count": 2}
    spec = tiny_spec(tmp_path, algorithms=[ppo], train={"iterations": 4, "batch": 8})
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    real, calls, saved = PPO.diffusion_update, [], []

    def interrupted(self, q, qm):
        calls.append(len(q))
        if len(calls) == 3:
            saved.extend(partial.glob("*.ckpt"))
            saved.append(load_state(saved[0])["algo"]["prompt_stats"])
            raise KeyboardInterrupt
        return real(self, q, qm)

    partial = tmp_path / "out.partial"
    monkeypatch.setattr(PPO, "diffusion_update", interrupted)
    out = ["diffusion", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(out + ["--checkpoint-every", "1"]) != 0
    monkeypatch.undo()
    assert not (tmp_path / "out").exists() and len(saved) == 2
    stats = saved[1]  # after two updates of 8 prompts: 16 rewards, one prompt drawn 5 times keeps its last 4
    assert sorted(map(len, stats.values())) == [2, 2, 2, 2, 3, 4]
    assert all(v.dtype == "float64" for v in stats.values())
    assert main(out + ["--resume"]) == 0
    assert rows(tmp_path / "out") == rows(tmp_path / "ref")
    spec0 = tiny_spec(tmp_path, algorithms=[{k: v for k, v in ppo.items() if not k.startswith("prompt_")}],
                      train={"iterations": 4, "batch": 8})
    assert main(["diffusion", "run", str(spec0), "--out", str(tmp_path / "within"), "--quiet"]) == 0
    ref, within = rows(tmp_path / "ref"), rows(tmp_path / "within")
    loss = [(float(a["loss"]), float(b["loss"])) for a, b in zip(ref[1:], within[1:])]
    assert abs(loss[0][0] - loss[0][1]) < 1e-2 * abs(loss[0][1])  # iteration 1: the fallbacks' eps (1e-6 vs 1e-8)
    assert all(abs(a - b) > 1e-3 for a, b in loss[1:])  # then the buffers' statistics


def test_an_algorithms_own_batch_and_diffusion_dpo_from_the_spec(tmp_path):
    """``train: {batch: B}`` in an algorithm's entry gives it B prompts per iteration (PPO: B queries, the study's
    equal queries); ``loss: diffusion`` runs Diffusion-DPO through the spec (2 queries per prompt)."""
    spec = tiny_spec(tmp_path, algorithms=[{"name": "ppo", "clip_eps": 0.1, "epochs": 1, "train": {"batch": 8}},
                                           {"name": "dpo", "mode": "online", "loss": "diffusion", "beta": 0.1}],
                     train={"iterations": 2})
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    r = rows(tmp_path / "a")
    final = {x["algorithm"]: x for x in r if x["iteration"] == "2"}
    assert final["ppo"]["queries"] == "16" and final["dpo"]["queries"] == "16"  # 2 × 8 prompts; 2 × 4 prompts × 2
    assert float(final["dpo"]["eval/kl"]) > 0  # the DPO update moved the policy off the reference


def test_a_second_run_into_a_held_folder_is_refused(tmp_path, capsys):
    from testbed.results import out_lock

    spec = tiny_spec(tmp_path)
    with out_lock(tmp_path / "out"):
        rc = main(["diffusion", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"another run (PID {os.getpid()}) is writing it" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


def test_paper_spec_dry_run_counts_stable_diffusion_offline(capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["diffusion", "run", str(ROOT / "experiments" / "diffusion" / "sd15_aesthetic.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # SD v1.5's published sizes: UNet 859,520,964; VAE 83,653,863; CLIP ViT-L/14 text encoder 123,060,480
    assert "UNet (SD v1.5): 859.52 M" in out and "VAE (SD v1.5): 83.65 M" in out and "text encoder: 123.06 M" in out
    # LoRA r = 4 on to_q/to_k/to_v/to_out.0 of the UNet's attention: r·(in + out) per projection
    assert "LoRA adapter (UNet attention): 0.80 M" in out
    assert out.count("models held") == 3
    # the memory estimate from the printed counts: the UNet and the VAE in fp16 (2 bytes each; the text encoder is let
    # go once the prompts are embedded), the reward's CLIP image encoder and MLP in fp32 (4), LoRA in fp32 with its
    # gradient and AdamW's two moments (16), and the batch's fp32 trajectories: prompts × trajectories per prompt ×
    # 51 latents of 4·64·64
    import re
    counts = {m[0]: float(m[1]) * 1e6 for m in re.findall(r"  (.+?): ([\d.]+) M parameters", out)}
    assert len(counts) == 6
    # the published configs' sizes (SD v1.5's UNet 859.52 M, VAE 83.65 M; CLIP ViT-L/14 text 123.06 M, vision
    # 303.97 M with its projection; the LAION MLP 768-1024-128-64-16-1; LoRA r 4 on to_q/k/v/out of 16 blocks)
    assert {k: round(v / 1e6, 2) for k, v in counts.items()} == {
        "UNet (SD v1.5)": 859.52, "VAE (SD v1.5)": 83.65, "CLIP ViT-L/14 text encoder": 123.06,
        "CLIP ViT-L/14 image encoder": 303.97, "LAION aesthetic MLP": 0.93, "LoRA adapter (UNet attention)": 0.80}
    unet_vae_gb = 2 * (counts["UNet (SD v1.5)"] + counts["VAE (SD v1.5)"]) / 1e9
    reward_gb = 4 * (counts["CLIP ViT-L/14 image encoder"] + counts["LAION aesthetic MLP"]) / 1e9
    opt_gb = 16 * counts["LoRA adapter (UNet attention)"] / 1e9
    got = re.findall(r"(\w+): models held.*?weights and optimiser ([\d.]+) GB per GPU \(frozen weights ([\d.]+): UNet "
                     r"and VAE fp16 ([\d.]+), reward fp32 ([\d.]+); LoRA \+ AdamW ([\d.]+)\); the batch's trajectories "
                     r"([\d.]+) GB \((\d+) × (\d+) × 51 fp32 latents of 16,384\)", out)
    assert [g[0] for g in got] == ["rebel", "ppo", "dpo"]
    for algo, total, frozen, uv, rw, opt, traj, batch, k in got:
        assert abs(float(uv) - unet_vae_gb) <= 0.006 and abs(float(rw) - reward_gb) <= 0.006
        assert abs(float(opt) - opt_gb) <= 0.0006 and abs(float(frozen) - unet_vae_gb - reward_gb) <= 0.006
        assert abs(float(total) - (unet_vae_gb + reward_gb + opt_gb)) <= 0.006
        assert (int(batch), int(k)) == {"rebel": (256, 2), "ppo": (512, 1), "dpo": (256, 2)}[algo]
        assert abs(float(traj) - int(batch) * int(k) * 51 * 16384 * 4 / 1e9) <= 0.006
    assert "gradient checkpointing on" in out and "sac+logos+ava1-l14-linearMSE.pth on openai/clip-vit-large-patch14" in out



def check_study_table(tmp_path):
    """The table reads each algorithm at the smallest final query count (PPO asks one reward per prompt, REBEL
    and DPO two): here PPO's 12 queries, which REBEL reached only at its iteration-0 evaluation."""
    from testbed.plotting.diffusion import plot_reward, plot_samples, table

    text = table(tmp_path / "a", tmp_path / "t.md").read_text()
    assert "at 12 queries" in text
    r = rows(tmp_path / "a")
    start = float(next(x for x in r if x["algorithm"] == "rebel" and x["iteration"] == "0")["eval/scores"])
    ppo_final = float(next(x for x in r if x["algorithm"] == "ppo" and x["iteration"] == "3")["eval/scores"])
    rebel_row = next(line for line in text.splitlines() if line.startswith("| REBEL"))
    ppo_row = next(line for line in text.splitlines() if line.startswith("| PPO"))
    assert rebel_row.split("|")[3].strip().startswith(f"{start:.4g} ± 0")
    assert ppo_row.split("|")[3].strip().startswith(f"{ppo_final:.4g} ± 0")
    assert plot_reward(tmp_path / "a", tmp_path / "r.png").stat().st_size > 0
    assert plot_samples(tmp_path / "a", tmp_path / "s.png").stat().st_size > 0


def test_the_final_images_are_the_final_policys_sampled_once(tmp_path, monkeypatch):
    """The run's final images (samples/<run>.npz) are those the last iteration's evaluation drew, not a second
    sampling pass: an evaluation of the final policy made afterwards, independently, gives the same images,
    and the policy is evaluated once per evaluated iteration (0, 2, 3) plus the reference once."""
    import numpy as np

    import testbed.diffusion.train as dtrain

    real, calls = dtrain.evaluate, []

    def counted(ctx, classes, n, seed, reference=False):
        calls.append((ctx, classes, n, seed, reference))
        return real(ctx, classes, n, seed, reference)

    monkeypatch.setattr(dtrain, "evaluate", counted)
    spec = tiny_spec(tmp_path, algorithms=[{"name": "rebel", "eta": 10.0}])
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert [c[4] for c in calls] == [False, False, False, True]
    ctx, classes, n, seed, _ = calls[-1]
    from testbed.training import torch_threads

    with torch_threads(1):  # the run's train.threads (float32 convolutions round by the thread count)
        again = real(ctx, classes, n, seed)
    saved = np.load(tmp_path / "out" / "samples" / "rebel-0-s0.npz")
    np.testing.assert_array_equal(saved["images"], again[2])
    np.testing.assert_array_equal(saved["labels"], again[3])
    assert not np.array_equal(saved["images"], np.load(tmp_path / "out" / "samples" / "reference-s0.npz")["images"])


def test_pretraining_runs_at_train_threads_whatever_the_callers_count_and_is_cached_per_count(tmp_path):
    from testbed.diffusion.data import cache_dir, pretrained
    from testbed.diffusion.spec import load_diffusion_spec

    spec = load_diffusion_spec(tiny_spec(tmp_path))
    before = torch.get_num_threads()
    states = []
    try:
        for caller in (1, 2):  # the caller's count must not reach the pre-trained weights
            torch.set_num_threads(caller)
            pre = dataclasses.replace(spec.pretrain, cache=str(tmp_path / f"cache{caller}"))
            net, _, _ = pretrained(spec.model, pre, spec.sampler, 0, threads=1)
            assert torch.get_num_threads() == caller
            states.append({k: v.clone() for k, v in net.state_dict().items()})
            assert len(list(cache_dir(pre).glob("*.pt"))) == 1
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    pre = dataclasses.replace(spec.pretrain, cache=str(tmp_path / "cache1"))
    pretrained(spec.model, pre, spec.sampler, 0, threads=2)  # another count: another model, not the cached one
    assert len(list(cache_dir(pre).glob("*.pt"))) == 2


def test_pretraining_cache_is_keyed_by_the_library_versions_and_the_code(tmp_path, monkeypatch):
    """A cached model is served only to the same diffusers (UNet, scheduler) and the same pre-training code: after
    an upgrade or an edit the key changes and the model is trained again, not silently reused."""
    import diffusers

    import testbed.diffusion.data as data
    from testbed.diffusion.spec import load_diffusion_spec

    spec = load_diffusion_spec(tiny_spec(tmp_path))
    pre = dataclasses.replace(spec.pretrain, cache=str(tmp_path / "cache"))
    data.pretrained(spec.model, pre, spec.sampler, 0, threads=1)
    data.pretrained(spec.model, pre, spec.sampler, 0, threads=1)
    assert len(list(data.cache_dir(pre).glob("*.pt"))) == 1  # served from the cache
    monkeypatch.setattr(diffusers, "__version__", diffusers.__version__ + ".post1")
    data.pretrained(spec.model, pre, spec.sampler, 0, threads=1)
    assert len(list(data.cache_dir(pre).glob("*.pt"))) == 2
    monkeypatch.undo()
    edited = tmp_path / "data.py"  # the same module with one comment added
    edited.write_bytes(Path(data.__file__).read_bytes() + b"# edited\n")
    monkeypatch.setattr(data, "__file__", str(edited))
    data.pretrained(spec.model, pre, spec.sampler, 0, threads=1)
    assert len(list(data.cache_dir(pre).glob("*.pt"))) == 3
