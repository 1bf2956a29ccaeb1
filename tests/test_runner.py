"""Runner, CLI and plotting end to end: the run folder, its schema, and numbers that can be rechecked."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from testbed.cli import main
from testbed.experiments import load_spec, read_metrics
from testbed.io import sha256
from testbed.metrics import COLUMNS
from testbed.problems import load_problem, make_tabular

SPEC = """
name: small
problems:
  - {kind: tabular, family: gap, contexts: 4, actions: 3, seed: 1}
  - {kind: linear, family: random, contexts: 3, actions: 4, dim: 2, seed: 2, misspecification: 0.2}
algorithms:
  - {name: rebel, mode: exact, eta: [0.5, 2]}
  - {name: rebel, mode: sampled, pairs: 50, eta: 1, beta: 0.1}
  - {name: npg, mode: sampled, samples: 60, eta: 1}
seeds: [0, 3]
iterations: 12
eval_every: 5
"""


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    return tmp_path / "out"


def test_run_folder_contents_and_schema(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "meta.json", "metrics.csv", "policies.npz",
                                                         "runs.csv", "timings.json"]
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == tuple(c for c in COLUMNS if c != "wall_time")  # wall_time: timings.json
    rows = read_metrics(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert len(config["runs"]) == 2 * 4 * 2  # problems x algorithm configs x seeds
    # iterations 0, 5, 10 and the last (12)
    per_run = {}
    for r in rows:
        per_run.setdefault(r["run_id"], []).append(r)
    assert len(per_run) == 16
    for run_id, rr in per_run.items():
        assert [r["iteration"] for r in rr] == [0, 5, 10, 12]
        run = next(c for c in config["runs"] if c["run_id"] == run_id)
        cfg = run["config"]
        per_iter = 2 * cfg["pairs"] if run["algorithm"] == "rebel" else cfg.get("samples")
        if run["config"]["mode"] == "exact":
            assert all(r["samples"] is None for r in rr)
        else:
            assert [r["samples"] for r in rr] == [per_iter * r["iteration"] for r in rr]
        assert all(r["exploitability"] is None for r in rr)
        assert all((r["kl_reg_gap"] is None) == (run["config"]["beta"] == 0) for r in rr)
        assert all((r["loss"] is None) == (run["algorithm"] == "npg" or r["iteration"] == 0) for r in rr)
    meta = json.loads((run_dir / "meta.json").read_text())
    for name, digest in meta["sha256"].items():
        assert sha256(run_dir / name) == digest
    assert meta["seeds"] == [0, 3]
    timings = json.loads((run_dir / "timings.json").read_text())
    assert set(timings["seconds"]) == set(per_run)
    assert all(list(r) == list(COLUMNS) and r["wall_time"] >= 0 for r in rows)  # merged back by read_metrics
    for rr in per_run.values():
        assert np.all(np.diff([r["wall_time"] for r in rr]) >= 0)


def test_final_metrics_recompute_from_saved_policies(run_dir):
    """The last row of each run equals the exact metrics recomputed from policies.npz."""
    spec = load_spec(run_dir.parent / "spec.yaml")
    rows = read_metrics(run_dir)
    pols = np.load(run_dir / "policies.npz")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for run in config["runs"]:
        last = [r for r in rows if r["run_id"] == run["run_id"]][-1]
        p = spec.problems[run["problem"]]
        pi = pols[f"{run['run_id']}/probs"]
        np.testing.assert_allclose(pi.sum(axis=1), 1)
        assert last["reward"] == pytest.approx(float(np.sum(p.rho[:, None] * pi * p.rewards)), rel=1e-12)
        assert last["suboptimality"] == pytest.approx(p.optimal_value() - last["reward"], abs=1e-12)
        kl = np.sum(p.rho[:, None] * pi * (np.log(pi) - np.log(p.pi_ref)))
        assert last["kl_ref"] == pytest.approx(kl, rel=1e-9, abs=1e-14)


def test_exact_runs_respect_the_bound_written_in_the_config(run_dir):
    """The mirror-descent bound KL(pi*||pi_0)/(eta·T) + (J* - J(pi_0))/T (Agarwal et al. 2021, Thm 16) recomputed
    here, not read from testbed.metrics: uniform pi_0, so KL(pi*||pi_0) = ln|Y| per context (pi* one-hot) and
    J* - J(pi_0) = E_rho[max_y r - mean_y r]; the config's written terms equal these, and every row obeys it."""
    spec = load_spec(run_dir.parent / "spec.yaml")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = read_metrics(run_dir)
    checked = 0
    for run in config["runs"]:
        th = run["theory"]
        if th is None:
            continue
        assert run["config"]["mode"] == "exact" and run["problem"].startswith("tabular")
        p, eta = spec.problems[run["problem"]], run["config"]["eta"]
        r = p.rewards
        assert np.all(np.sort(r, axis=1)[:, -1] > np.sort(r, axis=1)[:, -2])  # unique argmax: pi* one-hot
        kl_over_eta = np.log(r.shape[1]) / eta
        gap0 = float(p.rho @ (r.max(axis=1) - r.mean(axis=1)))
        assert th["kl_star_init_over_eta"] == pytest.approx(kl_over_eta, rel=1e-12)
        assert th["gap0"] == pytest.approx(gap0, rel=1e-12)
        for row in rows:
            if row["run_id"] == run["run_id"] and row["iteration"] > 0:
                assert row["suboptimality"] <= (kl_over_eta + gap0) / row["iteration"]
                checked += 1
    assert checked == 2 * 2 * 3


def test_same_seed_same_results_and_seeds_differ(tmp_path, run_dir):
    assert main(["run", str(run_dir.parent / "spec.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    a, b = read_metrics(run_dir), read_metrics(tmp_path / "again")
    strip = [{k: v for k, v in r.items() if k != "wall_time"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time"} for r in b]
    pa, pb = np.load(run_dir / "policies.npz"), np.load(tmp_path / "again" / "policies.npz")
    for k in pa.files:
        np.testing.assert_array_equal(pa[k], pb[k])
    s0 = [r["reward"] for r in a if "sampled" in r["algorithm"] and r["seed"] == 0 and r["iteration"] == 12]
    s3 = [r["reward"] for r in a if "sampled" in r["algorithm"] and r["seed"] == 3 and r["iteration"] == 12]
    assert s0 != s3


def test_user_npz_instance_end_to_end_via_the_console_script(tmp_path):
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "mine.npz", rewards=rng.random((3, 5)), rho=[0.2, 0.3, 0.5],
             pi_ref=rng.dirichlet(np.ones(5), size=3))
    (tmp_path / "s.yaml").write_text(
        "problems: [{file: mine.npz}]\nalgorithms: [{name: rebel, eta: 1}, {name: npg, eta: 1}]\n"
        "seeds: 1\niterations: 30\n")
    out = subprocess.run([sys.executable, "-m", "testbed.cli", "run", "s.yaml", "--out", "res", "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = read_metrics(tmp_path / "res")
    p = load_problem(tmp_path / "mine.npz")
    assert {r["problem"] for r in rows} == {"mine"}
    # exact REBEL from pi_ref: pi_30 ∝ pi_ref·exp(30·r)
    pi = p.pi_ref * np.exp(30 * p.rewards)
    pi /= pi.sum(axis=1, keepdims=True)
    last = [r for r in rows if r["algorithm"] == "rebel-exact" and r["iteration"] == 30][0]
    assert last["reward"] == pytest.approx(p.value(pi), rel=1e-12)


def test_plot_and_reproduce_write_figures(tmp_path, run_dir):
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "f.png"), "--panel-by", "eta"]) == 0
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "tiny.yaml").write_text(SPEC.replace("name: small", "name: tiny"))
    assert main(["reproduce", "--experiments", str(exp), "--figures", str(tmp_path / "figs"),
                 "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    assert (tmp_path / "figs" / "tiny.png").stat().st_size > 10_000
    # reproduce's run folder holds the same numbers as `testbed run` of the same spec
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "runs" / "tiny")) == strip(read_metrics(run_dir))


def test_shipped_experiment_specs_validate():
    root = Path(__file__).resolve().parents[1] / "experiments"
    specs = [load_spec(p) for p in sorted(root.glob("*.yaml"))]
    assert {s.name for s in specs} >= {"tabular_rebel_vs_npg", "linear_rebel_vs_npg"}
    for s in specs:
        # seeds give bands only where a run is random; an all-exact spec (deterministic runs) may use one
        deterministic = all(r.config.get("mode", "exact") in ("exact", "population")
                            and r.config.get("reward_model", "population") == "population" for r in s.runs)
        assert deterministic or len({r.seed for r in s.runs}) >= 5, s.name


def test_swept_problem_fields_name_the_instances(tmp_path):
    (tmp_path / "s.yaml").write_text("problems: [{kind: tabular, family: gap, gap: [0.1, 0.3], contexts: 3, actions: 4}]\n"
                                     "algorithms: [{name: rebel}]\niterations: 1\n")
    spec = load_spec(tmp_path / "s.yaml")
    assert sorted(spec.problems) == ["tabular-gap-3x4-s0(gap=0.1)", "tabular-gap-3x4-s0(gap=0.3)"]
    gaps = [np.ptp(np.sort(p.rewards, axis=1)[:, -2:], axis=1) for p in spec.problems.values()]
    np.testing.assert_allclose(sorted(g[0] for g in gaps), [0.1, 0.3])


def test_default_problems():
    p = make_tabular()
    assert p.rewards.shape == (20, 10) and p.name == "tabular-random-20x10-s0"


def test_a_run_folder_with_the_old_column_names_reads_under_the_new_ones(tmp_path, run_dir):
    """metrics.csv written before PPO's diagnostics moved to policy/… (clipfrac, approx_kl, ratio_max) reads under
    the new names, each cell where it was."""
    from testbed.results import OLD_NAMES

    old = tmp_path / "old"
    old.mkdir()
    text = (run_dir / "metrics.csv").read_text()
    header, rest = text.split("\n", 1)
    renamed = {new: name for name, new in OLD_NAMES.items()}
    (old / "metrics.csv").write_text(",".join(renamed.get(c, c) for c in header.split(",")) + "\n" + rest)
    assert any(c in renamed for c in header.split(","))  # the file read here holds at least one renamed column
    new_rows, old_rows = read_metrics(run_dir), read_metrics(old)
    drop = ("wall_time",)  # timings.json is not copied
    assert [{k: v for k, v in r.items() if k not in drop} for r in old_rows] == \
        [{k: v for k, v in r.items() if k not in drop} for r in new_rows]
