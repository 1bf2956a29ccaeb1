"""Preference runs end to end: schema (exploitability_avg), the averaged iterates, files, plots, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from testbed.cli import main
from testbed.experiments import read_metrics
from testbed.metrics import COLUMNS, hedge_regret_bound
from testbed.plotting.preference import read_trajectory
from testbed.policies import initial_policy
from testbed.problems import make_preference
from tests.conftest import make_algo
from tests.test_cli_errors import assert_nothing_written, assert_one_error_line, listing, run_cli, write_files

SPEC = """
name: pref_small
problems:
  - {kind: preference, family: rps, pi_ref: [0.6, 0.3, 0.1]}
  - {kind: preference, family: nlhf, eps: [-0.1, 0.1]}
  - {file: inst.npz}
algorithms:
  - {name: hedge, eta: 0.5}
  - {name: rebel_pref, mode: sampled, pairs: 30, eta: 0.3}
  - {name: nash_md, tau: 0.2}
  - {name: optimistic_hedge, eta: 0.5}
  - {name: sppo, eta: 0.5}
  - {name: bt_rebel, eta: 1}
  - {name: dpo, labels: preference, mode: population, pair_law: independent, optimizer: gd, lr: 1.0, beta: 0.1}
seeds: 2
iterations: 25
eval_every: 5
trajectories: true
plot: {kind: exploitability}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    make_preference("skew", contexts=2, actions=4, seed=0, name="user-skew").save(root / "inst.npz")
    (root / "spec.yaml").write_text(SPEC)
    assert main(["run", str(root / "spec.yaml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root / "out"


def test_schema_has_exploitability_avg_right_after_exploitability():
    i = COLUMNS.index("exploitability")
    assert COLUMNS[i + 1] == "exploitability_avg"


def test_preference_run_folder(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "meta.json", "metrics.csv", "policies.npz",
                                                         "runs.csv", "timings.json", "trajectory.csv"]
    rows = read_metrics(run_dir)
    for r in rows:
        assert r["reward"] is None and r["suboptimality"] is None and r["kl_reg_gap"] is None
        assert r["exploitability"] is not None and r["exploitability"] >= -1e-12
        assert (r["exploitability_avg"] is None) == (r["iteration"] == 0)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    theory = config["problems"]["nlhf-eps+0.1"]["theory"]
    np.testing.assert_allclose(theory["minimax_winner"][0], [1 / 3 + 0.05, 1 / 3 + 0.05, 1 / 3 - 0.1], atol=1e-9)
    assert np.argmax(theory["bt_rewards"][0]) == 0
    assert {r["report_iterate"] for r in config["runs"] if r["algorithm"] == "hedge"} == {"avg"}
    with np.load(run_dir / "policies.npz") as z:
        assert all(f"{r['run_id']}/avg_probs" in z.files for r in config["runs"])


def test_reported_average_is_the_mean_of_pi_0_to_pi_t_minus_1(run_dir):
    """exploitability_avg at row t = expl(mean(pi_0 … pi_{t−1})): recomputed here and checked against the regret bound."""
    p = make_preference("rps", pi_ref=[0.6, 0.3, 0.1])
    algo, pol, probs = make_algo("hedge", p, eta=0.5), initial_policy(p), []
    for _ in range(25):
        probs.append(pol.probs())
        pol = algo.update(pol, None).policy
    rows = [r for r in read_metrics(run_dir) if r["run_id"] == "rps:hedge-exact:s0"]
    for r in rows[1:]:
        t = r["iteration"]
        assert r["exploitability_avg"] == pytest.approx(p.exploitability(np.mean(probs[:t], axis=0)), abs=1e-12)
        bound = (float(p.rho @ np.max(-np.log(probs[0]), axis=1)) / 0.5 + 0.5 * t / 8) / t  # (L/eta + eta·t/8)/t
        assert float(hedge_regret_bound(p, initial_policy(p), 0.5, t)) == pytest.approx(bound, rel=1e-12)
        assert r["exploitability_avg"] <= bound
    traj = read_trajectory(run_dir)["rps:hedge-exact:s0"]
    np.testing.assert_allclose(traj["avg_prob"][-1], np.mean(probs, axis=0), atol=1e-12)


def test_reward_problems_leave_exploitability_empty(tmp_path):
    (tmp_path / "s.yaml").write_text("problems: [{kind: tabular, contexts: 2, actions: 3}]\n"
                                     "algorithms: [{name: rebel}]\niterations: 3\n")
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert all(r["exploitability"] is None and r["exploitability_avg"] is None for r in read_metrics(tmp_path / "o"))


@pytest.mark.parametrize("kind", ["exploitability", "simplex", "curves"])
def test_plots_from_the_run_folder(run_dir, tmp_path, kind):
    argv = ["plot", str(run_dir), "--out", str(tmp_path / f"{kind}.png"), "--kind", kind]
    if kind == "curves":
        argv += ["--y", "exploitability_avg"]
    if kind == "simplex":  # 3 actions only: a run folder with the rps problem alone
        spec = SPEC.replace("  - {kind: preference, family: nlhf, eps: [-0.1, 0.1]}\n", "").replace("  - {file: inst.npz}\n", "")
        (tmp_path / "spec.yaml").write_text(spec.replace("kind: exploitability", "kind: simplex"))
        assert main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "rps"), "--quiet"]) == 0
        argv[1] = str(tmp_path / "rps")
    assert main(argv) == 0
    assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eps_sweep_plot(tmp_path):
    (tmp_path / "s.yaml").write_text("problems: [{kind: preference, family: nlhf, eps: [-0.2, 0.0, 0.2]}]\n"
                                     "algorithms: [{name: bt_rebel}, {name: rebel_pref, eta: 0.5}]\niterations: 30\n"
                                     "plot: {kind: eps_sweep}\n")
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert main(["plot", str(tmp_path / "o"), "--out", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "e.png").stat().st_size > 10_000


# ----- bad input: exit code 2, one line, nothing written ------------------------------------------------------
PSPEC = "problems: [{file: inst.npz}]\nalgorithms: [{name: hedge}]\niterations: 2\n"
GOOD = np.array([[[0.5, 0.7, 0.2], [0.3, 0.5, 0.6], [0.8, 0.4, 0.5]]])
BAD_TENSORS = {
    "not-skew": (np.array([[[0.5, 0.7], [0.7, 0.5]]]), ("inst.npz", "preferences", "P + Pᵀ = 1")),
    "outside-0-1": (np.array([[[0.5, 1.5], [-0.5, 0.5]]]), ("inst.npz", "preferences", "[0, 1]")),
    "diagonal": (np.array([[[0.4, 0.5], [0.5, 0.6]]]), ("inst.npz", "preferences", "diagonal")),
    "not-square": (np.full((1, 2, 3), 0.5), ("inst.npz", "preferences", "shape [X, Y, Y]")),
    "2-d": (np.full((3, 3), 0.5), ("inst.npz", "preferences", "3-d")),
    "nan": (np.where(np.eye(3, dtype=bool), 0.5, np.nan)[None], ("inst.npz", "preferences", "finite")),
}


@pytest.mark.parametrize(("P", "expect"), [pytest.param(*v, id=k) for k, v in BAD_TENSORS.items()])
def test_invalid_preference_tensor_through_the_cli(tmp_path, monkeypatch, capsys, P, expect):
    write_files(tmp_path, {"spec.yaml": PSPEC, "inst.npz": {"preferences": P}})
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    assert main(["run", "spec.yaml", "--out", "out", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, *expect)
    assert_nothing_written(tmp_path, before)


def test_invalid_preference_tensor_subprocess(tmp_path):
    write_files(tmp_path, {"spec.yaml": PSPEC, "inst.npz": {"preferences": BAD_TENSORS["not-skew"][0]}})
    before = listing(tmp_path)
    proc = run_cli(tmp_path, "run", "spec.yaml", "--out", "out", "--quiet")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error_line(proc.stderr, *BAD_TENSORS["not-skew"][1])
    assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize(("spec", "expect"), [
    ("problems: [{kind: preference, family: rps}]\nalgorithms: [{name: rebel}]\niterations: 2\n",
     ("'rebel' runs on reward problems", "preference problem")),
    ("problems: [{kind: tabular, contexts: 2, actions: 3}]\nalgorithms: [{name: hedge}]\niterations: 2\n",
     ("'hedge' runs on preference problems",)),
    ("problems: [{kind: preference, family: nlhf, eps: 0.5}]\nalgorithms: [{name: hedge}]\niterations: 2\n",
     ("problems[0].eps",)),
    ("problems: [{kind: preference, family: rps, pi_ref: [0.5, 0.5]}]\nalgorithms: [{name: hedge}]\niterations: 2\n",
     ("problems[0].pi_ref", "shape")),
    ("problems: [{kind: preference, family: rps}]\nalgorithms: [{name: nash_md, schedule: constant, eta: 10, tau: 1}]\n"
     "iterations: 2\n", ("eta·tau",)),
    ("problems: [{kind: preference, family: rps}]\nalgorithms: [{name: rebel_pref, target: reward}]\niterations: 2\n",
     ("algorithms[0].target", "reward")),
    ("problems: [{kind: preference, family: rps}]\nalgorithms: [{name: hedge}]\niterations: 2\nplot: {kind: simplex}\n",
     ("trajectories: true",)),
    ("problems: [{kind: preference, family: rps}]\nalgorithms: [{name: hedge}]\niterations: 2\nplot: {kind: pie}\n",
     ("plot.kind", "pie")),
])
def test_bad_preference_specs(tmp_path, monkeypatch, capsys, spec, expect):
    write_files(tmp_path, {"spec.yaml": spec, "inst.npz": {"preferences": GOOD}})
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    assert main(["run", "spec.yaml", "--out", "out", "--quiet"]) == 2
    assert_one_error_line(capsys.readouterr().err, *expect)
    assert_nothing_written(tmp_path, before)
