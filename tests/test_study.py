"""The comparison-study machinery: --jobs, the frontier/sensitivity/table outputs, PPO/DPO bad input."""

import numpy as np
import pytest
import yaml

from testbed.cli import main
from testbed.experiments import read_metrics

SPEC = """
name: mini
problems: [{kind: tabular, family: random, contexts: 4, actions: 3, seed: 1}]
algorithms:
  - {name: rebel, mode: sampled, pairs: 40, eta: [0.5, 2.0]}
  - {name: rebel, mode: sampled, solver: adam, pairs: 40, label: rebel-adam}
  - {name: npg, mode: sampled, samples: 80}
  - {name: ppo, batch: 80, minibatch: 16, beta: [0.01, 0.1]}
  - {name: dpo, mode: online, pairs: 40, beta: [0.05, 0.5], label: dpo-online}
  - {name: dpo, mode: offline, pairs: 200, iterations: 3, label: dpo-offline}
  - {name: rebel, mode: exact, eta: 1.0, policy: {kind: mlp, hidden: [8]}, label: never}
seeds: 3
iterations: 6
eval_every: 2
plot:
  - {kind: curve, x: samples}
  - {kind: frontier}
  - {kind: sensitivity}
  - {kind: table}
"""


def write_spec(tmp_path, text=SPEC):
    (tmp_path / "s.yaml").write_text(text)
    return str(tmp_path / "s.yaml")


def test_mlp_policy_with_exact_rebel_is_refused_before_any_work(tmp_path, capsys):
    assert main(["run", write_spec(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "algorithms[6].policy" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    mlp = "policy: {kind: mlp, hidden: [8]}"
    new = f"  - {{name: rebel, mode: sampled, solver: adam, pairs: 40, {mlp}, label: rebel-mlp}}\n"
    spec = write_spec(tmp, SPEC.replace(f"  - {{name: rebel, mode: exact, eta: 1.0, {mlp}, label: never}}\n",
                                        new))
    assert main(["run", spec, "--out", str(tmp / "j1"), "--quiet", "--jobs", "1"]) == 0
    assert main(["run", spec, "--out", str(tmp / "j2"), "--quiet", "--jobs", "2"]) == 0
    return tmp


def test_jobs_do_not_change_results(runs):
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(read_metrics(runs / "j1")) == strip(read_metrics(runs / "j2"))
    a, b = np.load(runs / "j1" / "policies.npz"), np.load(runs / "j2" / "policies.npz")
    assert a.files == b.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_budget_columns(runs):
    rows = read_metrics(runs / "j1")
    last = {r["algorithm"]: r for r in rows if r["seed"] == 0}
    assert (last["rebel-sampled(eta=0.5)"]["samples"], last["rebel-sampled(eta=0.5)"]["queries"]) == (480, 480)
    assert (last["npg-sampled"]["samples"], last["npg-sampled"]["queries"]) == (480, 480)
    assert (last["ppo(beta=0.01)"]["samples"], last["ppo(beta=0.01)"]["queries"]) == (480, 480)
    assert (last["dpo-online(beta=0.05)"]["samples"], last["dpo-online(beta=0.05)"]["queries"]) == (480, 240)
    off = [r for r in rows if r["algorithm"] == "dpo-offline" and r["seed"] == 0]
    assert [r["iteration"] for r in off] == [0, 2, 3] and all((r["samples"], r["queries"]) == (400, 200) for r in off)
    ppo = [r for r in rows if r["algorithm"].startswith("ppo") and r["iteration"] > 0]
    assert all(r["policy/clipfrac"] is not None and r["policy/ratio_max"] > 0 and r["policy/approx_kl"] >= 0 for r in ppo)
    assert all(r["policy/clipfrac"] is None for r in rows if not r["algorithm"].startswith("ppo"))


def test_every_policy_lies_below_the_exact_kl_frontier(runs):
    """pi*_beta maximises J - beta·KL, so every (KL, J) pair satisfies J <= J(pi*_b) + b·(KL - KL(pi*_b))
    for every b on the grid written to config.yaml."""
    config = yaml.safe_load((runs / "j1" / "config.yaml").read_text())
    front = next(iter(config["problems"].values()))["frontier"]
    b, kl_s, j_s = (np.array(front[k]) for k in ("beta", "kl", "reward"))
    assert np.all(np.diff(j_s) <= 1e-12) and np.all(np.diff(kl_s) <= 1e-12)  # beta up: less reward, less KL
    for r in read_metrics(runs / "j1"):
        assert np.all(r["reward"] <= j_s + b * (r["kl_ref"] - kl_s) + 1e-9)


def test_plot_kinds_and_the_results_table(runs, tmp_path):
    for kind, ext in (("frontier", "png"), ("sensitivity", "png"), ("curve", "png"), ("table", "md")):
        out = tmp_path / f"{kind}.{ext}"
        assert main(["plot", str(runs / "j1"), "--kind", kind, "--out", str(out)]) == 0
        assert out.stat().st_size > 500
    table = (tmp_path / "table.md").read_text()
    # the ranking follows the mean final sub-optimality over seeds, recomputed here
    rows = read_metrics(runs / "j1")
    finals = {}
    for r in rows:
        finals.setdefault(r["algorithm"], {})[r["seed"]] = r["suboptimality"]
    order = sorted(finals, key=lambda a: np.mean(list(finals[a].values())))
    ranked = [line.split("|")[2].strip() for line in table.splitlines() if line.startswith("| ") and "rank" not in line]
    assert ranked == order


BAD = {
    "dpo-beta-zero": ("algorithms: [{name: dpo, beta: 0}]", "algorithms[0].beta"),
    "dpo-beta-negative": ("algorithms: [{name: dpo, beta: -0.1}]", "algorithms[0].beta"),
    "ppo-eps-one": ("algorithms: [{name: ppo, clip_eps: 1.0}]", "algorithms[0].clip_eps"),
    "ppo-eps-zero": ("algorithms: [{name: ppo, clip_eps: 0}]", "algorithms[0].clip_eps"),
    "ppo-eps-negative": ("algorithms: [{name: ppo, clip_eps: -0.2}]", "algorithms[0].clip_eps"),
    "ppo-flag-not-bool": ("algorithms: [{name: ppo, normalize_advantage: 3}]", "algorithms[0].normalize_advantage"),
    "ppo-critic-unknown": ("algorithms: [{name: ppo, critic: transformer}]", "algorithms[0].critic"),
    "dpo-labels-tensor-without-file": ("algorithms: [{name: dpo, labels: tensor}]", "algorithms[0].preferences"),
    "dpo-dataset-missing": ("algorithms: [{name: dpo, mode: offline, dataset: nope.jsonl}]", "nope.jsonl"),
}
DATASETS = {
    "empty": ("", "is empty"),
    "not-json": ('{"prompt": 0, "chosen": 1\n', "line 1 is not JSON"),
    "missing-key": ('{"prompt": 0, "chosen": 1}\n', "line 1 is missing column(s) ['rejected']"),
    "not-an-index": ('{"prompt": 0, "chosen": "a", "rejected": 1}\n', "chosen must be an integer index"),
    "chosen-equals-rejected": ('{"prompt": 0, "chosen": 1, "rejected": 0}\n{"prompt": 1, "chosen": 2, "rejected": 2}\n',
                               "row 1 has chosen == rejected"),
    "index-out-of-range": ('{"prompt": 9, "chosen": 1, "rejected": 0}\n', "prompt indices must be in [0, 4)"),
}


def bad_spec(algorithms: str) -> str:
    return f"problems: [{{kind: tabular, contexts: 4, actions: 3}}]\n{algorithms}\niterations: 2\n"


def check_refused(tmp_path, capsys, text, expect):
    spec = write_spec(tmp_path, text)
    assert main(["run", spec, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("testbed: error:") and expect in err[0], err
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ppo_dpo_input(tmp_path, capsys, case):
    algorithms, expect = BAD[case]
    check_refused(tmp_path, capsys, bad_spec(algorithms), expect)


@pytest.mark.parametrize("case", sorted(DATASETS))
def test_bad_dataset(tmp_path, capsys, case):
    content, expect = DATASETS[case]
    (tmp_path / "d.jsonl").write_text(content)
    check_refused(tmp_path, capsys, bad_spec("algorithms: [{name: dpo, mode: offline, dataset: d.jsonl}]"), expect)


def test_bad_npz_dataset_and_jobs(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", prompt=np.array([0]), chosen=np.array([1]))
    check_refused(tmp_path, capsys, bad_spec("algorithms: [{name: dpo, mode: offline, dataset: d.npz}]"),
                  "missing array(s) ['rejected']")
    assert main(["run", write_spec(tmp_path, bad_spec("algorithms: [{name: rebel}]")), "--out", str(tmp_path / "o"),
                 "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jobs" in err and "must be a positive integer" in err
