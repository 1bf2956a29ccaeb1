"""The mutation table of `testbed check`: a researcher's correct REBEL passes every check; each planted
bug in it (tests/conformance_mutants.py) fails the exact step checks, in the property named for it, with
the step ratio the bug predicts."""

import re
from pathlib import Path

import pytest

import tests.conformance_mutants as m
from testbed.cli import main
from testbed.experiments.conformance import Result, format_table, load_rule
from testbed.experiments.conformance_exact import check_steps

MUTANTS = str(Path(m.__file__))

TABLE = {
    # mutant: (property that must fail, {setting in the check name: predicted step ratio}, property that must pass)
    "ForgotInvEta": ("step: mirror descent", {"eta = 0.3, beta = 0:": 1 / 0.3, "eta = 3, beta = 0:": 1 / 3},
                     "eta = 1, beta = 0:"),
    "EtaSquared": ("step: mirror descent", {"eta = 0.3, beta = 0:": 0.3, "eta = 3, beta = 0:": 3.0}, "eta = 1, beta = 0:"),
    "DoubledStep": ("step: mirror descent", {"eta = 1, beta = 0:": 2.0, "eta = 3, beta = 0:": 2.0}, None),
    "UniformYPrime": ("log-linear step", {}, "step: mirror descent"),
    "YPrimeIsY": ("step: mirror descent", {"eta = 1, beta = 0:": 0.0}, None),
    "AnchorPiRef": ("step: mirror descent", {}, None),
    "SignFlip": ("step: mirror descent", {"eta = 1, beta = 0:": -1.0, "eta = 0.3, beta = 0:": -1.0}, None),
    "MissingStopGradient": ("step: mirror descent", {"eta = 1, beta = 0:": 0.0}, None),
    "EpochsOffByOne": ("step: mirror descent", {"eta = 1, beta = 0:": 2.0}, None),
    "MeanOverContexts": ("log-linear step", {}, "step: mirror descent"),
    "KLDropped": ("beta = 0.2", {}, "beta = 0:"),
    "RewardOfYForBoth": ("step: mirror descent", {"eta = 1, beta = 0:": 0.0}, None),
    "ClaimsHalf": ("eta = 0.5, beta = 0:", {"eta = 0.5, beta = 0:": 2.0}, None),
    "ClaimsTen": ("eta = 10, beta = 0:", {"eta = 10, beta = 0:": 0.1}, None),
    # stateful: exact on the first call of an instance, not after (the worst of updates 1-3 is update 2 or 3)
    "StaleFiveX": ("step: mirror descent", {"eta = 1, beta = 0:": 5.0, "eta = 0.3, beta = 0:": 5.0}, None),
    "StaleHalf": ("step: mirror descent", {"eta = 1, beta = 0:": 0.5, "eta = 3, beta = 0:": 0.5}, None),
}


def _ratio(check: str) -> float:
    return float(re.search(r"step ratio (-?[0-9.e+-]+|nan)\)", check).group(1))


def test_the_mutation_table_has_at_least_12_distinct_bugs():
    planted = {n for n, c in vars(m).items() if isinstance(c, type) and issubclass(c, m.PopulationREBEL)}
    assert planted - {"PopulationREBEL"} == set(TABLE) and len(TABLE) >= 12


@pytest.mark.parametrize("mutant", sorted(TABLE))
def test_each_mutant_fails_the_property_named_for_it(mutant):
    failing, ratios, passing = TABLE[mutant]
    results = check_steps(load_rule(f"{MUTANTS}:{mutant}"), Result)
    assert any(failing in r.check and not r.passed and r.measured > 1e-3 for r in results), format_table(mutant, results)
    for setting, want in ratios.items():
        got = [_ratio(r.check) for r in results if r.check.startswith("step:") and setting in r.check]
        assert got and abs(got[0] - want) <= 1e-5 * max(1, abs(want))  # printed to 6 digits, (setting, got, want)
    if passing:
        assert all(r.passed for r in results if passing in r.check), format_table(mutant, results)
    table = format_table(mutant, results)
    assert "checks passed: FAIL" in table
    assert any(failing in line and line.endswith("FAIL") for line in table.splitlines())


def test_the_correct_rule_passes_every_check_of_its_battery_on_three_policy_kinds(capsys):
    assert main(["check", f"{MUTANTS}:PopulationREBEL"]) == 0
    out = capsys.readouterr().out
    assert "25/25 checks passed: PASS" in out and " FAIL" not in out
    assert "log-linear step" in out and "MLP step" in out and "monotone improvement" in out
    assert out.count("  step: mirror descent") == 4  # eta in {1, 0.3, 3} and beta = 0.2


def test_the_readme_rule_passes_the_exact_step_checks_and_runs_beside_npg(tmp_path):
    """The README's 'write, check, compare' rule, extracted verbatim: exact on three policy kinds, and on a
    misspecified linear bandit its iterates are NPG's (exact REBEL with y' ~ pi_t is NPG)."""
    import numpy as np

    import testbed
    from testbed.results import read_metrics

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (tmp_path / "my_rules.py").write_text(re.search(r"```python\n(# my_rules.py.*?)```", readme, re.S).group(1))
    results = check_steps(load_rule(f"{tmp_path / 'my_rules.py'}:MyRebel"), Result)
    assert len(results) == 12 and all(r.passed for r in results), format_table("MyRebel", results)
    spec = {"problems": [{"kind": "linear", "contexts": 6, "actions": 4, "misspecification": 0.5}], "iterations": 5,
            "algorithms": [{"name": "npg", "eta": 0.7}, {"module": f"{tmp_path / 'my_rules.py'}:MyRebel", "eta": 0.7}]}
    rows = read_metrics(testbed.run(spec, tmp_path / "out"))
    ours = [r["suboptimality"] for r in rows if r["algorithm"] == "my-rebel"]
    npg = [r["suboptimality"] for r in rows if r["algorithm"] == "npg-exact"]
    assert len(ours) == 6 and ours[-1] < ours[0]
    np.testing.assert_allclose(ours, npg, rtol=0, atol=1e-10)
