"""Sharded rollouts on 2 processes (DDP over gloo, torchrun) against ``train.shards: 2`` on one process, which
computes the same thing (testbed/llm/shards.py), and a 2-process run killed after a checkpoint and resumed.

Why the comparison can be exact: the shard emulation samples each shard from process k's stream, computes each
shard's statistics over its own responses, and sums the gradients as DDP does (each shard's G micro-batches first,
then the 2 shards' sums; the loss scalings 1/(G·K) and DDP's 1/world are powers of two here, exact in floating
point). Measured on 2 CPU cores (2026-12-06): every metric of every row the same text in float64 (REBEL, PPO) and
in float32 (REBEL, RLOO, offline DPO) (max abs difference 0), while the plain 1-process run (shards: 1, the same
global batch) differs by 0.083 in objective/scores. The tests assert equality to 1e-12 (relative to max(1, |x|)),
far below what a shard sampled from another stream, or statistics taken over the whole batch, give.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import yaml  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMING = {"wall_time", "peak_memory_mb", "tokens_per_s", "eps"}  # measured, not computed: excluded
TOL = 1e-12
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")


def write_spec(path: Path, dtype: str, shards: int = 1, algorithms=("rebel", "ppo")) -> Path:
    """Two iterations of two epochs of 2 minibatches of 2 micro-batches per process: REBEL and PPO (whose whitened
    advantages and rewards are per-process statistics with sharded rollouts), or others (a name, or an entry)."""
    raw = toy_spec({"name": "rebel"}, iterations=2, batch=16, minibatch=8, grad_accum=2, eval_every=2,
                   rollouts="sharded", shards=shards)
    raw["algorithms"] = [{"epochs": 2, **({"name": a} if isinstance(a, str) else a)} for a in algorithms]
    raw["model"]["dtype"] = dtype
    path.write_text(yaml.safe_dump(raw))
    return path


def rows(d: Path) -> list[dict]:
    with open(d / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def max_diff(a: Path, b: Path, col: str | None = None) -> float:
    """The largest difference between two run folders' metrics (all columns but the timings, or ``col``), relative
    to max(1, |x|); a cell that is a number in one and not in the other (or not the same text) counts as inf."""
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb) > 0
    worst = 0.0
    for x, y in zip(ra, rb):
        for k in [col] if col else x:
            if x[k] == y[k]:
                continue
            try:
                u, v = float(x[k]), float(y[k])
            except ValueError:
                return float("inf")
            worst = max(worst, abs(u - v) / max(1.0, abs(u)))
    return worst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(spec: Path, out: Path, *args, popen: bool = False):
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "testbed.cli", "llm", "run", str(spec), "--out", str(out), "--quiet", *args]
    if popen:
        return subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def kill_all(proc) -> None:
    """SIGKILL torchrun and its workers (each of which torchrun starts in a session of its own)."""
    import psutil

    procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in procs:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)
    proc.wait()


@pytest.fixture(scope="module")
def two64(tmp_path_factory):
    """The uninterrupted 2-process float64 run (shared by the comparison and the resume test)."""
    if not TORCHRUN.exists():
        pytest.skip("torchrun not installed")
    d = tmp_path_factory.mktemp("two64")
    return torchrun(write_spec(d / "spec.yaml", "float64"), d / "two")


@needs_torchrun
def test_float64_shards_2_match_two_processes_and_one_shard_does_not(two64, tmp_path):
    sharded = tmp_path / "shards2"
    assert main(["llm", "run", str(write_spec(tmp_path / "s2.yaml", "float64", shards=2)), "--out", str(sharded),
                 "--quiet"]) == 0
    assert max_diff(two64, sharded) <= TOL
    plain = tmp_path / "shards1"
    assert main(["llm", "run", str(write_spec(tmp_path / "s1.yaml", "float64")), "--out", str(plain), "--quiet"]) == 0
    # the same global batch sampled from one stream, statistics over the whole batch: another run (measured 0.083)
    assert max_diff(two64, plain, "objective/scores") > 0.02
    assert [r["samples"] for r in rows(sharded)] == [r["samples"] for r in rows(two64)] == ["0", "32", "64", "0", "16", "32"]


@needs_torchrun
def test_float32_shards_2_match_two_processes(tmp_path):
    """REBEL, RLOO (advantages whitened per process) and offline DPO (each process reads its share of the rows)."""
    import random

    rng = random.Random(0)
    words = ("good", "bad", "red", "blue", "cat", "dog")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"prompt": " ".join(rng.choices(words, k=rng.randint(1, 4))),
                                                              "chosen": "good good", "rejected": "bad"}) + "\n"
                                                  for _ in range(40)))
    algorithms = ("rebel", {"name": "rloo", "k": 2}, {"name": "dpo", "mode": "offline", "dataset": "pairs.jsonl"})
    two = torchrun(write_spec(tmp_path / "spec.yaml", "float32", algorithms=algorithms), tmp_path / "two")
    sharded = tmp_path / "shards2"
    assert main(["llm", "run", str(write_spec(tmp_path / "s2.yaml", "float32", shards=2, algorithms=algorithms)),
                 "--out", str(sharded), "--quiet"]) == 0
    assert max_diff(two, sharded) <= TOL
    assert len(rows(sharded)) == 3 * 3


@needs_torchrun
def test_two_processes_killed_after_a_checkpoint_and_resumed_match_the_uninterrupted_run(two64, tmp_path):
    """Killed (SIGKILL, torchrun and both processes) after the first checkpoint; resumed on 2 processes:
    every metric the same text as the uninterrupted run, and the rows up to the checkpoint are the checkpoint's
    (their wall times too: the run continued, it did not start again)."""
    from testbed.training.checkpoint import load_state

    spec = write_spec(tmp_path / "spec.yaml", "float64")
    proc = torchrun(spec, tmp_path / "out", "--checkpoint-every", "1", popen=True)
    partial = tmp_path / "out.partial"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.is_dir() and any(p.suffix == ".ckpt" for p in partial.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read()[-2000:]
    kill_all(proc)
    ckpt = load_state(next(p for p in partial.iterdir() if p.suffix == ".ckpt"))
    assert len(ckpt["torch_rngs"]) == 2 and ckpt["t"] >= 1
    torchrun(spec, tmp_path / "out", "--resume", "--checkpoint-every", "1")
    assert max_diff(two64, tmp_path / "out") == 0.0  # the same text
    walls = json.loads((tmp_path / "out" / "timings.json").read_text())["wall_time"][ckpt["rows"][0]["run_id"]]
    assert walls[:len(ckpt["rows"])] == [r["wall_time"] for r in ckpt["rows"]]
    assert not partial.exists()


def test_shards_run_interrupted_and_resumed_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    """train.shards: 2 saves each shard's torch RNG stream in its checkpoints: a run stopped after its first
    checkpoint and resumed gives the same metrics text as one that was not stopped."""
    from testbed.llm.shards import Shards

    spec = write_spec(tmp_path / "spec.yaml", "float64", shards=2, algorithms=("ppo",))
    raw = yaml.safe_load(spec.read_text())
    raw["train"]["iterations"] = 3
    spec.write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    real, calls = Shards.update, []

    def update(self, *a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a)

    monkeypatch.setattr(Shards, "update", update)
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--checkpoint-every", "1"]) == 130
    monkeypatch.setattr(Shards, "update", real)
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--resume",
                 "--checkpoint-every", "1"]) == 0
    assert max_diff(tmp_path / "ref", tmp_path / "out") == 0.0


def test_a_shard_is_encoded_as_its_prompts_alone():
    """trim: a shard's rows of the left-padded batch, without the columns that are padding in all of them, are
    what encoding the shard's prompts alone gives (the prompts of process k)."""
    import numpy as np

    from testbed.llm.shards import trim
    from testbed.llm.toy import toy_prompts, toy_tokenizer

    tok = toy_tokenizer()
    prompts = toy_prompts(16, seed=3, min_len=1, max_len=6)

    def encode(ps):
        e = tok(ps, return_tensors="pt", padding=True)
        return e["input_ids"], e["attention_mask"]

    q, qm = encode(prompts)
    widths = set()
    for part in np.array_split(np.arange(16), 4):
        a, am = trim(q[part], qm[part])
        b, bm = encode([prompts[i] for i in part])
        assert a.tolist() == b.tolist() and am.tolist() == bm.tolist()
        widths.add(a.shape[1])
    assert len(widths) > 1 and min(widths) < q.shape[1]  # shards of different widths: trimming did something


@pytest.mark.parametrize("train, accelerate, message", [
    ({"shards": 0}, {}, "train.shards must be a positive integer"),
    ({"shards": 3}, {}, "train.shards = 3 must divide train.batch = 32"),
    ({"shards": 2}, {"num_processes": 2}, "run it on one process (this run has 2)"),
    ({"shards": 2, "minibatch": 2, "grad_accum": 2}, {}, "not divisible by shards × grad_accum = 2 × 2"),
    ({"shards": 2, "rollouts": "replicated"}, {}, "it needs train.rollouts: sharded and no accelerate.deepspeed"),
    ({"shards": 2}, {"deepspeed": str(Path(__file__).resolve().parents[1] / "experiments" / "llm" / "ds_zero2.json")},
     "it needs train.rollouts: sharded and no accelerate.deepspeed"),
])
def test_bad_shards(tmp_path, capsys, train, accelerate, message):
    raw = toy_spec({"name": "rebel"}, **train)
    if accelerate:
        raw["accelerate"] = accelerate
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def _toy_shards(update, seed=5, K=2):
    """Shards of a back-end without a model: its joint solver calls each shard's loss once, in the shard's stream."""
    import numpy as np

    from testbed.llm.backend import LMBackend
    from testbed.llm.shards import Shards

    ctx = LMBackend(None, None, None, None, None, np.random.default_rng(0), 1, 0)

    def optimise_shards(config, n, epochs, loss_fns, enter=None):
        out = []
        for k, fn in enumerate(loss_fns):
            with enter(k):
                out.append(fn(n))
        return out

    ctx.optimise_shards = optimise_shards

    class Algo:
        cursor = 0

        def __init__(self):
            self.ctx = ctx

        def lm_update(self, q, qm):
            return update(self, q, qm)

    return Shards(ctx, K, seed, ("cursor",)), Algo()


def test_each_shard_draws_from_its_own_stream_and_process_0s_state_is_kept():
    """Shard k's draws, before, inside and after the solver, are process k's (torch seeded stream_seed(seed, k));
    the numpy RNG is the same for every shard; the algorithm's state is process 0's; the steps merge in rank order."""
    import numpy as np
    import torch

    from testbed.algorithms.base import Step
    from testbed.llm.shards import stream_seed

    def update(algo, q, qm):
        c = algo.ctx
        a, x = torch.rand(3), c.rng.random()
        loss = c.optimise(None, len(q), 1, lambda n: float(torch.rand(1)))
        algo.cursor += 1
        return Step(None, loss, len(q), 2 * len(q), {"a": a, "b": torch.rand(2), "x": torch.tensor([x], dtype=torch.float64),
                                                     "who": torch.tensor([c.rank, c.world])})

    shards, algo = _toy_shards(update)
    q = torch.arange(12).reshape(4, 3)
    step = shards.update(algo, q, torch.ones_like(q))
    want = {"a": [], "loss": [], "b": []}
    for k in range(2):
        torch.manual_seed(stream_seed(5, k))
        want["a"].append(torch.rand(3))
        want["loss"].append(float(torch.rand(1)))
        want["b"].append(torch.rand(2))
    assert torch.equal(step.extras["a"], torch.cat(want["a"])) and torch.equal(step.extras["b"], torch.cat(want["b"]))
    assert step.loss == float(torch.tensor(want["loss"]).mean())
    x = np.random.default_rng(0).random()
    assert step.extras["x"].tolist() == [x, x] and step.extras["who"].tolist() == [0, 2, 1, 2]
    assert (step.samples, step.queries, algo.cursor) == (4, 8, 1)  # process 0's state: one update, not two
    step2 = shards.update(algo, q, torch.ones_like(q))  # the streams go on where they stopped
    torch.manual_seed(stream_seed(5, 1))
    torch.rand(6)
    assert torch.equal(step2.extras["a"][3:], torch.rand(3))


@pytest.mark.parametrize("case", ["raises", "diverges", "other-settings"])
def test_a_failing_shard_raises_and_leaves_no_thread_waiting(case):
    import threading

    import torch

    from testbed.algorithms.base import Step

    def update(algo, q, qm):
        c = algo.ctx
        if c.rank == 1 and case == "raises":
            raise ValueError("shard 1 failed")
        if c.rank == 1 and case == "diverges":
            return Step(None, 0.0, 1, 1, {})
        c.optimise(None, len(q) + (c.rank if case == "other-settings" else 0), 1, lambda n: 0.0)
        return Step(None, 0.0, 1, 1, {})

    shards, algo = _toy_shards(update)
    before = threading.active_count()
    q = torch.zeros(4, 2, dtype=torch.long)
    with pytest.raises(ValueError if case == "raises" else RuntimeError, match="shard 1 failed|train.shards"):
        shards.update(algo, q, torch.ones_like(q))
    assert threading.active_count() == before


def test_set_aside_sums_the_shards_and_leaves_an_untouched_parameter_without_a_gradient():
    """DDP's sum of the shards' gradients: shard 1's moved aside, shard 2's added back (g1 + g2 exactly); a
    parameter no shard gave a gradient keeps grad None (AdamW skips it, weight decay included, as in one
    process), rather than getting a zero gradient that AdamW would step on."""
    from types import SimpleNamespace

    import torch

    from testbed.llm.backend import LMBackend

    used, unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2))
    fake = SimpleNamespace(params=[used, unused])
    g1, g2 = torch.tensor([0.1, -2.0, 3.0]), torch.tensor([0.7, 1.5, -3.0])
    used.grad = g1.clone()
    aside = LMBackend._set_aside(fake, None)
    assert used.grad is None and unused.grad is None
    used.grad = g2.clone()
    LMBackend._set_aside(fake, aside, back=True)
    assert torch.equal(used.grad, g1 + g2)
    assert unused.grad is None
    torch.optim.AdamW([used, unused], lr=0.1, weight_decay=0.5).step()
    assert torch.equal(unused.detach(), torch.ones(2))


@pytest.mark.parametrize("algorithm", [{"name": "rebel"}, {"name": "ppo"}])
def test_the_dry_run_plan_of_k_shards_has_the_activations_of_one_of_k_processes(algorithm):
    """One process running K shards runs the forward passes one of K processes runs: micro-batches of
    M / (K·G) items and rollouts of batch / K prompts. Its planned activations and KV cache are those of the
    K-process plan (the weights and optimiser state are not: one process holds them whole), and K times
    smaller rollouts than the one-process plan's."""
    from testbed.llm.plan import plan
    from testbed.llm.spec import parse_lm_spec

    train = {"batch": 16, "minibatch": 8, "grad_accum": 2}
    shards = plan(parse_lm_spec(toy_spec(algorithm, shards=2, **train), world=1))["algorithms"][0]
    two = plan(parse_lm_spec({**toy_spec(algorithm, **train), "accelerate": {"num_processes": 2}}, world=2))
    one = plan(parse_lm_spec(toy_spec(algorithm, **train), world=1))["algorithms"][0]
    two = two["algorithms"][0]
    for k in ("micro_batch_sequences", "activations_gib", "kv_cache_gib"):
        assert shards[k] == two[k], k
    assert shards["micro_batch_sequences"] * 2 == one["micro_batch_sequences"]
    assert shards["kv_cache_gib"] * 2 == pytest.approx(one["kv_cache_gib"], rel=1e-12)
    assert shards["weights_gib"] == one["weights_gib"]


def test_each_shard_keeps_its_own_algorithm_state_from_one_update_to_the_next():
    """Process k keeps its own state between updates: a state that moves by 1 + rank per update is 1 + k after one
    update and 2·(1 + k) after two, on shard k (not shard 0's value copied to every shard); the run's algorithm
    holds process 0's."""
    import torch

    from testbed.algorithms.base import Step

    def update(algo, q, qm):
        c = algo.ctx
        c.optimise(None, len(q), 1, lambda n: 0.0)
        algo.cursor += 1 + c.rank
        return Step(None, 0.0, len(q), len(q), {"cursor": torch.tensor([float(algo.cursor)])})

    shards, algo = _toy_shards(update, K=3)
    q = torch.arange(12).reshape(6, 2)
    assert shards.update(algo, q, torch.ones_like(q)).extras["cursor"].tolist() == [1, 2, 3]
    assert shards.update(algo, q, torch.ones_like(q)).extras["cursor"].tolist() == [2, 4, 6]
    assert algo.cursor == 2
