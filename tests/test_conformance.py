"""`testbed check`: every built-in passes its battery; planted bugs fail the check named for them."""

from pathlib import Path

import pytest

from testbed.cli import main
from testbed.experiments.conformance import BUILTINS, load_rule, run_checks

BUGS = str(Path(__file__).with_name("conformance_bugs.py"))


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_algorithms_pass_their_battery(name, capsys):
    assert main(["check", f"builtin:{name}"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "checks passed: PASS" in out


PLANTED = {
    # bug: (check that must fail, checks that must still pass)
    "SignError": ("monotone improvement", None),
    "SquaredReward": ("invariance", "monotone improvement"),
    "SelfPlaySignError": ("average iterate: exploitability", "fixed point"),
    "DPOMissingBeta": ("reaches pi*_beta", "all preferences ½"),
    "BudgetHog": ("query budget", None),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bugs_are_caught_by_the_named_check(bug, capsys):
    assert main(["check", f"{BUGS}:{bug}"]) == 1
    failing, passing = PLANTED[bug]
    results = run_checks(load_rule(f"{BUGS}:{bug}"))
    assert any(failing in r.check and not r.passed for r in results), results
    if passing:
        assert all(r.passed for r in results if passing in r.check), results
    assert "checks passed: FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("target,expect", [
    ("nocolon", "MODULE:OBJECT"),
    ("no_such_module_xyz:Rule", "cannot import"),
    (f"{BUGS}:Missing", "has no object"),
    ("builtin:trpo", "unknown built-in"),
    ("testbed.errors:InputError", "update(api, params, rng)"),
])
def test_bad_check_targets(target, expect, capsys):
    assert main(["check", target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0]
