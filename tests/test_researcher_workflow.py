"""The researcher's workflow: a rule from their own module runs, plots and tabulates beside the built-ins;
`testbed plot` draws LM run folders; run folders load into pandas with the runs' hyper-parameters."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from testbed.cli import main
from testbed.results import read_metrics
from testbed.results_load import load_rows, read_runs

RULES = Path(__file__).with_name("conformance_mutants.py")


def _spec(tmp_path: Path, algorithms: list, **extra) -> Path:
    shutil.copy(RULES, tmp_path / "my_rules.py")
    spec = {"problems": [{"kind": "tabular", "family": "random", "contexts": 5, "actions": 4, "seed": 0}],
            "algorithms": algorithms, "seeds": 2, "iterations": 8, **extra}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "spec.yaml"


def _legend_of(monkeypatch, module) -> list:
    seen = []
    real = module.save_figure

    def capture(fig, out, *a, **kw):
        for ax in fig.axes:
            seen.extend((line.get_label(), np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                        for line in ax.get_lines())
        seen.extend(t.get_text() for leg in fig.legends for t in leg.get_texts())
        return real(fig, out, *a, **kw)

    monkeypatch.setattr(module, "save_figure", capture)
    return seen


def test_a_user_rule_from_a_module_runs_plots_and_tabulates_beside_the_builtins(tmp_path, capsys, monkeypatch):
    import testbed.plotting.curves as curves

    spec = _spec(tmp_path, [{"name": "rebel", "mode": "exact", "eta": 1},
                            {"module": "my_rules.py:PopulationREBEL", "eta": [0.5, 1]}])
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "6 runs" in capsys.readouterr().out
    rows = read_metrics(tmp_path / "out")
    labels = {r["algorithm"] for r in rows}
    assert labels == {"rebel-exact", "my-rebel(eta=0.5)", "my-rebel(eta=1)"}
    ours = [r["suboptimality"] for r in rows if r["algorithm"] == "my-rebel(eta=1)"]
    builtin = [r["suboptimality"] for r in rows if r["algorithm"] == "rebel-exact"]
    np.testing.assert_allclose(ours, builtin, rtol=0, atol=1e-12)  # the same mirror-descent iterates
    slower = [r["suboptimality"] for r in rows if r["algorithm"] == "my-rebel(eta=0.5)"]
    assert slower[-1] > ours[-1]  # a smaller step is behind after 8 iterations

    seen = _legend_of(monkeypatch, curves)
    assert main(["plot", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "suboptimality.png").is_file()
    assert any(isinstance(s, str) and s.startswith("my-rebel") for s in seen), seen
    runs = {r["run_id"]: r for r in read_runs(tmp_path / "out")}
    assert {r["eta"] for r in runs.values() if r["name"] == "user"} == {0.5, 1}
    assert all(r["module"].endswith("my_rules.py:PopulationREBEL") for r in runs.values() if r["name"] == "user")


@pytest.mark.parametrize("entry,expect", [
    ({"module": "no_such_file.py:Rule"}, "algorithms[0].module: file"),
    ({"module": "my_rules.py:Nope"}, "has no object 'Nope'"),
    ({"module": "my_rules.py:PopulationREBEL", "etaa": 1}, "algorithms[0].etaa: the rule"),
    ({"module": "nocolon"}, "MODULE:OBJECT"),
])
def test_bad_user_rule_entries_are_one_line_and_exit_2(tmp_path, capsys, entry, expect):
    spec = _spec(tmp_path, [entry])
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "out").exists()


def test_runs_csv_is_the_resolved_config_of_every_run(tmp_path):
    spec = _spec(tmp_path, [{"name": "rebel", "mode": "sampled", "eta": [0.3, 2], "pairs": 40},
                            {"name": "npg", "mode": "sampled", "samples": 30}])
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    runs = {r["run_id"]: r for r in read_runs(tmp_path / "out")}
    assert set(runs) == {r["run_id"] for r in config["runs"]}
    for r in config["runs"]:
        got = runs[r["run_id"]]
        assert got["seed"] == r["seed"] and got["name"] == r["algorithm"] and got["algorithm"] == r["label"]
        for k, v in r["config"].items():
            assert got[k if k not in ("samples", "lr", "loss") else f"config/{k}"] == v, (k, v, got)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert "runs.csv" in meta["sha256"]
    rows = load_rows(tmp_path / "out")
    assert len(rows) == len(read_metrics(tmp_path / "out"))
    assert {(r["eta"], r["algorithm"]) for r in rows if r["name"] == "rebel"} == {
        (0.3, "rebel-sampled(eta=0.3)"), (2.0, "rebel-sampled(eta=2)")}


def test_results_load_into_pandas_with_hyper_parameter_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    import testbed

    spec = _spec(tmp_path, [{"name": "rebel", "mode": "exact", "eta": [0.1, 1, 10]}], seeds=3)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    df = testbed.load(tmp_path / "out")
    assert isinstance(df, pd.DataFrame) and {"eta", "mode", "seed", "iteration", "suboptimality"} <= set(df.columns)
    final = df[df.iteration == 8].groupby("eta").suboptimality.mean()
    assert list(final.index) == [0.1, 1.0, 10.0] and final.is_monotonic_decreasing  # bigger exact steps: closer
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        assert len(df) == sum(1 for _ in csv.DictReader(f))


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.llm_helpers import toy_spec

    tmp = tmp_path_factory.mktemp("lm")
    (tmp / "spec.yaml").write_text(yaml.safe_dump(toy_spec({"name": "rebel"}, seeds=(0, 1), iterations=3,
                                                           eval_every=1, batch=8, minibatch=8)))
    assert main(["llm", "run", str(tmp / "spec.yaml"), "--out", str(tmp / "out"), "--quiet"]) == 0
    return tmp / "out"


def test_testbed_plot_on_an_lm_run_folder_writes_a_figure(lm_folder, monkeypatch):
    import testbed.plotting.llm as llm

    seen = _legend_of(monkeypatch, llm)
    assert main(["plot", str(lm_folder)]) == 0
    assert (lm_folder / "reward.png").stat().st_size > 0
    rows = [r for r in read_metrics(lm_folder) if r["reward"] is not None]
    lines = [s for s in seen if not isinstance(s, str) and s[0].startswith("rebel-0")]
    assert len(lines) == 1  # the mean over the two seeds
    _, x, y = lines[0]
    for it, v in zip(x, y):
        want = np.mean([r["reward"] for r in rows if r["iteration"] == it])
        assert v == pytest.approx(want, abs=1e-12)
    assert main(["plot", str(lm_folder), "--y", "objective/kl"]) == 0 and (lm_folder / "objective_kl.png").is_file()


def test_an_lm_run_folder_loads_with_its_hyper_parameters(lm_folder):
    runs = {r["run_id"]: r for r in read_runs(lm_folder)}
    assert set(runs) == {"rebel-0-s0", "rebel-0-s1"}
    config = yaml.safe_load((lm_folder / "config.yaml").read_text())
    assert all(r["eta"] == config["algorithms"][0]["eta"] and r["beta"] == config["algorithms"][0]["beta"]
               for r in runs.values())
    rows = load_rows(lm_folder)
    assert rows and all(r["name"] == "rebel" and r["mode"] == "sampled" for r in rows)


def _event_scalars(logdir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_metrics_csv(tmp_path):
    pytest.importorskip("tensorboard")
    spec = _spec(tmp_path, [{"name": "rebel", "mode": "sampled", "pairs": 30, "eta": [0.5, 2]},
                            {"module": "my_rules.py:PopulationREBEL"}])
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--log", "tensorboard"]) == 0
    scalars = _event_scalars(tmp_path / "out.logs")
    with open(tmp_path / "out" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    compared = 0
    for r in rows:
        for k, v in r.items():
            if k in ("run_id", "problem", "algorithm", "seed", "iteration") or v == "":
                continue
            got = scalars[f"{r['run_id']}/{k}"][int(r["iteration"])]
            assert got == pytest.approx(float(v), rel=1e-6, abs=1e-30), (r["run_id"], k)  # float32 events
            compared += 1
    n_tags = sum(1 for t in scalars if not t.endswith("/wall_time"))
    assert compared == sum(len(v) for t, v in scalars.items() if not t.endswith("/wall_time")) and n_tags > 0
    # the run folder is the same with or without logging
    assert main(["run", str(spec), "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    assert (tmp_path / "plain" / "metrics.csv").read_bytes() == (tmp_path / "out" / "metrics.csv").read_bytes()


def test_key_value_overrides_are_validated_like_the_spec(tmp_path, capsys):
    spec = _spec(tmp_path, [{"name": "rebel", "mode": "exact", "eta": 1}])
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--quiet", "iterations=3", "algorithms.0.eta=[0.5,2]", "seeds=1"]) == 0
    runs = read_runs(out)
    assert sorted(r["eta"] for r in runs) == [0.5, 2.0] and {r["iterations"] for r in runs} == {3}
    capsys.readouterr()
    for bad, expect in [("iteratons=3", "unknown key 'iteratons'"), ("algorithms.3.eta=1", "algorithms has 1 entries"),
                        ("algorithms.0.etaa=1", "unknown parameter(s) ['etaa']"), ("algorithms.0.eta=0", "eta must be"),
                        ("=1", "must look like key=value")]:
        assert main(["run", str(spec), bad, "--out", str(tmp_path / "bad"), "--quiet"]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], (bad, err)
        assert not (tmp_path / "bad").exists()


def test_the_python_api_runs_a_spec_dict_and_loads_it(tmp_path):
    import testbed
    from testbed.errors import InputError

    spec = {"problems": [{"kind": "tabular", "contexts": 4, "actions": 3}], "algorithms": [{"name": "npg", "eta": [0.5, 1]}],
            "iterations": 4, "seeds": 1}
    path = testbed.run(spec, tmp_path / "api", overrides=["iterations=2"])
    rows = load_rows(path)
    assert {r["iteration"] for r in rows} == {0, 1, 2} and {r["eta"] for r in rows} == {0.5, 1.0}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "cli"), "--quiet", "iterations=2"]) == 0
    assert (tmp_path / "cli" / "metrics.csv").read_bytes() == (path / "metrics.csv").read_bytes()  # one code path
    with pytest.raises(InputError, match="algorithms"):
        testbed.run({**spec, "algorithms": [{"name": "trpo"}]}, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


DECAYING = '''
import os

class Decaying:
    """Mirror descent with step eta/t: its counter t is state kept on the rule between updates."""
    family, eta, t = "mirror_descent", 1.0, 0

    def update(self, api, logits, rng):
        self.t += 1
        if os.environ.get("STOP_AT") == str(self.t):
            raise KeyboardInterrupt
        return logits + self.eta / self.t * api.reward_table()
'''


def test_a_user_rule_with_state_is_checkpointed_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    (tmp_path / "decaying.py").write_text(DECAYING)
    spec = {"problems": [{"kind": "tabular", "contexts": 4, "actions": 3}], "algorithms": [{"module": "decaying.py:Decaying"}],
            "iterations": 12, "seeds": 1}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    args = [str(tmp_path / "spec.yaml"), "--quiet", "--checkpoint-every", "3"]
    assert main(["run", *args, "--out", str(tmp_path / "whole")]) == 0
    monkeypatch.setenv("STOP_AT", "8")
    assert main(["run", *args, "--out", str(tmp_path / "cut")]) == 130
    assert (tmp_path / "cut.partial").is_dir() and not (tmp_path / "cut").exists()
    monkeypatch.delenv("STOP_AT")
    assert main(["run", *args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert (tmp_path / "cut" / "metrics.csv").read_bytes() == (tmp_path / "whole" / "metrics.csv").read_bytes()
    from scipy.special import softmax

    from testbed.problems import make_tabular

    p = make_tabular("random", contexts=4, actions=3)  # the closed form: ln pi_T = (sum_t eta/t)·r + c(x)
    want = p.value(softmax(sum(1 / t for t in range(1, 13)) * p.rewards, axis=1))
    assert read_metrics(tmp_path / "whole")[-1]["reward"] == pytest.approx(want, abs=1e-12)
