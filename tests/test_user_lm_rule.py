"""A user's rule on the LM back-end: ``{module: M:O}`` in an LM spec runs through the one LM loop beside the
built-ins, and ``testbed check`` runs its LM battery (one-token identity, EOS) — tests/lm_rules.py."""

import csv
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")

from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402

RULES = Path(__file__).with_name("lm_rules.py")
SETTING = {"eta": 2.0, "beta": 0.05, "epochs": 1}


def _rows(path: Path) -> dict:
    out: dict = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            out.setdefault(r["run_id"], []).append(r)
    return out


def test_a_user_lm_rule_runs_in_an_lm_spec_beside_rebel(tmp_path, capsys):
    """LMRebel re-implements REBEL (official form) through the LM API, so its run must give the built-in
    REBEL's rows: the same responses, rewards, KL and loss at every iteration of the same seed."""
    shutil.copy(RULES, tmp_path / "my_lm_rules.py")
    raw = toy_spec({"name": "rebel", "form": "official", **SETTING}, iterations=4, batch=16, minibatch=8, eval_every=2)
    raw["algorithms"].append({"module": "my_lm_rules.py:LMRebel", **SETTING})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out")]) == 0
    rows = _rows(tmp_path / "out" / "metrics.csv")
    builtin, user = rows["rebel-0-s0"], rows["user-1-s0"]
    assert len(builtin) == len(user) == 5
    assert {r["algorithm"] for r in user} == {"my-lm-rebel"}  # the rule's name labels its rows
    cols = ["samples", "queries", "reward", "kl_ref", "loss", "objective/entropy", "eval/scores"]
    moved = abs(float(builtin[-1]["reward"]) - float(builtin[0]["reward"] or builtin[1]["reward"]))
    for b, u in zip(builtin, user):
        for c in cols:
            if b[c] == "":
                assert u[c] == "", (c, b["iteration"])
            else:
                assert float(u[c]) == pytest.approx(float(b[c]), rel=1e-6, abs=1e-9), (c, b["iteration"])
    assert moved > 0  # the runs did something for the equality to mean anything
    with open(tmp_path / "out" / "runs.csv") as f:
        runs = {r["run_id"]: r for r in csv.DictReader(f)}
    assert runs["user-1-s0"]["module"].endswith("my_lm_rules.py:LMRebel")
    assert runs["user-1-s0"]["algorithm"] == "my-lm-rebel" and runs["user-1-s0"]["name"] == "user"
    assert float(runs["user-1-s0"]["eta"]) == 2.0


def test_an_lm_spec_refuses_a_rule_without_lm_update(tmp_path, capsys):
    shutil.copy(RULES.with_name("conformance_mutants.py"), tmp_path / "my_rules.py")
    raw = toy_spec({"module": "my_rules.py:PopulationREBEL", "eta": 1.0})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lm_update(api, query, query_mask)" in err[0] and "algorithms[0]" in err[0]
    assert not (tmp_path / "out").exists()


LM_TABLE = {
    # mutant: (row that must fail, {setting: predicted step ratio}, row that must pass)
    "LMSignFlip": ("LM one-token", {"eta = 1, beta = 0.05:": -1.0}, None),
    "LMForgotInvEta": ("eta = 0.3, beta = 0.05", {"eta = 0.3, beta = 0.05:": 1 / 0.3, "eta = 3, beta = 0.05:": 1 / 3},
                       "eta = 1, beta = 0.05:"),
    "LMMeanOverTokens": ("LM EOS", {}, "LM one-token"),
    "LMAnchorRef": ("LM one-token", {}, None),
    "LMKLDropped": ("LM one-token", {}, None),
    "LMSameResponse": ("LM one-token", {"eta = 1, beta = 0.05:": 0.0}, None),
    "LMMissingStopGradient": ("LM one-token", {"eta = 1, beta = 0.05:": 0.0}, None),
    "LMRewardOfYForBoth": ("LM one-token", {"eta = 1, beta = 0.05:": 0.0}, None),
}


def _ratio(check: str) -> float:
    import re
    return float(re.search(r"step ratio (-?[0-9.e+-]+|nan)\)", check).group(1))


def _lm_results(name: str):
    from testbed.experiments.conformance import Result, load_rule
    from testbed.llm.conformance import check_step_lm

    return check_step_lm(load_rule(f"{RULES}:{name}"), Result)


def test_the_lm_rule_passes_the_lm_battery(capsys):
    assert main(["check", f"{RULES}:LMRebel"]) == 0  # an LM-only rule: the LM rows of the mirror_descent battery
    assert "8/8 checks passed: PASS" in capsys.readouterr().out
    results = _lm_results("LMRebel")
    assert len(results) == 8 and all(r.passed for r in results), [(r.check, r.measured) for r in results]
    assert all(abs(_ratio(r.check) - 1) < 1e-5 for r in results)
    assert sum("LM EOS" in r.check for r in results) == 4


@pytest.mark.parametrize("mutant", sorted(LM_TABLE))
def test_each_lm_mutant_fails_the_lm_row_named_for_it(mutant):
    failing, ratios, passing = LM_TABLE[mutant]
    results = _lm_results(mutant)
    table = [(r.check, r.measured, r.passed) for r in results]
    assert any(failing in r.check and not r.passed and r.measured > 1e-3 for r in results), table
    for setting, want in ratios.items():
        got = [_ratio(r.check) for r in results if "one-token" in r.check and setting in r.check]
        assert got and abs(got[0] - want) <= 1e-5 * max(1, abs(want)), (setting, got, want)
    if passing:
        assert all(r.passed for r in results if passing in r.check), table


def test_llm_run_takes_key_value_overrides_validated_like_the_spec(tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(toy_spec({"name": "rebel"}, iterations=4, batch=16,
                                                                minibatch=8)))
    spec = str(tmp_path / "spec.yaml")
    for bad, named in (("train.iterationz=2", "iterationz"), ("trian.iterations=2", "trian"),
                       ("algorithms.3.eta=2", "algorithms has 1 entries"), ("algorithms.0.eta=-1", "eta")):
        assert main(["llm", "run", spec, "--out", str(tmp_path / "bad"), bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], (bad, err)
        assert not (tmp_path / "bad").exists()
    assert main(["llm", "run", spec, "train.iterations=2", "--out", str(tmp_path / "out"), "algorithms.0.eta=3"]) == 0
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["train"]["iterations"] == 2 and config["algorithms"][0]["eta"] == 3
    assert [r["iteration"] for r in _rows(tmp_path / "out" / "metrics.csv")["rebel-0-s0"]] == ["0", "1", "2"]


def test_the_readme_lm_rule_passes_its_battery_and_matches_rebel(tmp_path, capsys, monkeypatch):
    """The README's LM rule, extracted verbatim: 8/8 LM checks, the built-in REBEL's rows in a run, and its own
    curve, under its name, in `testbed plot`."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("# my_lm_rules.py")
    (tmp_path / "my_lm_rules.py").write_text(readme[start:readme.index("```", start)])
    assert main(["check", f"{tmp_path / 'my_lm_rules.py'}:MyLMRebel"]) == 0
    assert "8/8 checks passed: PASS" in capsys.readouterr().out
    setting = {"eta": 1.0, "beta": 0.05, "epochs": 1}
    raw = toy_spec({"name": "rebel", "form": "official", **setting}, iterations=2, batch=16, minibatch=8)
    raw["algorithms"].append({"module": "my_lm_rules.py:MyLMRebel", **setting})
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(tmp_path / "lm.yaml"), "--out", str(tmp_path / "out")]) == 0
    rows = _rows(tmp_path / "out" / "metrics.csv")
    for b, u in zip(rows["rebel-0-s0"], rows["user-1-s0"], strict=True):
        assert [u[c] for c in ("samples", "reward", "kl_ref", "loss")] == [b[c] for c in ("samples", "reward", "kl_ref", "loss")]
    from test_researcher_workflow import _legend_of

    import testbed.plotting.llm as lm_plots

    seen = _legend_of(monkeypatch, lm_plots)
    assert main(["plot", str(tmp_path / "out"), "--y", "reward"]) == 0
    labels = [s[0] for s in seen if isinstance(s, tuple)]
    assert any(lab.startswith("my-lm-rebel-1") for lab in labels) and any(lab.startswith("rebel-0") for lab in labels)


BAD_RULES = '''
import torch
from lm_rules import LMRebel

class NoKinds:                       # an LM rule that does not declare kinds: taken as tabular, which needs update
    family, eta = "mirror_descent", 1.0
    def lm_update(self, api, q, qm):
        return 0.0

class TabularAndLM(NoKinds):
    kinds = ("tabular", "lm")

class SampledLM(NoKinds):
    family, kinds = "sampled", ("lm",)

class LMWithoutLMUpdate:
    family, kinds, eta = "mirror_descent", ("lm",), 1.0
    def update(self, api, params, rng):
        return params

class Raises(LMRebel):
    def reward_lm(self, ro, B):
        return ro["no such key"]
'''


@pytest.mark.parametrize("rule, named", [("NoKinds", "'tabular', which needs a method update(api, params, rng)"),
                                         ("TabularAndLM", "'tabular', which needs a method update(api, params, rng)"),
                                         ("SampledLM", "the sampled battery runs the rule's update(api, params, rng)"),
                                         ("LMWithoutLMUpdate", "'lm', which needs a method lm_update(api, query, query_mask)")])
def test_testbed_check_names_a_missing_method_in_one_line(tmp_path, capsys, monkeypatch, rule, named):
    monkeypatch.syspath_prepend(str(RULES.parent))
    (tmp_path / "bad.py").write_text(BAD_RULES)
    assert main(["check", f"{tmp_path / 'bad.py'}:{rule}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_an_exception_in_the_rule_is_a_failed_check_not_an_internal_error(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(RULES.parent))
    (tmp_path / "bad.py").write_text(BAD_RULES)
    assert main(["check", f"{tmp_path / 'bad.py'}:Raises"]) == 1
    out = capsys.readouterr().out
    assert "the rule raised KeyError: 'no such key'" in out and "0/1 checks passed: FAIL" in out
