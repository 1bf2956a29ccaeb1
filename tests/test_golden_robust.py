"""The golden check holds on any machine (issue 14, item 16): one ulp in every run's initial parameters
(the test-only hook TESTBED_PERTURB_ULP in testbed.policies.initial_policy) does not fail it, while
chaotic runs are still compared, as seed statistics with a confidence interval."""

from __future__ import annotations

import numpy as np
import pytest

from testbed.experiments import golden
from testbed.policies import PERTURB_ULP, initial_policy
from testbed.problems import make_linear, make_tabular
from tests.test_golden import check


def test_the_hook_moves_every_initial_parameter_by_one_ulp(monkeypatch):
    tab, lin = make_tabular(contexts=3, actions=4), make_linear(contexts=3, actions=4, dim=2)
    base_t, base_l = initial_policy(tab).params, initial_policy(lin, "loglinear").params
    monkeypatch.setenv(PERTURB_ULP, "1")
    moved_t, moved_l = initial_policy(tab).params, initial_policy(lin, "loglinear").params
    assert np.all(moved_l != base_l) and np.all(np.abs(moved_l - base_l) == np.spacing(1.0))
    # tabular params are renormalised log-probabilities: each moves by at most a few ulps, some by one
    assert np.any(moved_t != base_t) and np.max(np.abs(moved_t - base_t)) <= 4 * np.spacing(np.abs(base_t)).max()


def test_fast_subset_passes_with_initial_parameters_one_ulp_off(tmp_path, capsys, monkeypatch):
    """Once this failed: sampled NPG at eta = 10 moved by 0.030 (tabular) and 0.047 (linear) in suboptimality at
    iteration 200 -- its solver's noise, since fixed (it now passes with those rows at bit-level tolerances)."""
    monkeypatch.setenv(PERTURB_ULP, "1")
    assert check(tmp_path, "--jobs", "1") == 0
    out = capsys.readouterr().out
    assert "golden check:" in out and "OK" in out and "moved" not in out


def test_only_the_penalised_ppo_runs_are_chaotic():
    """Sampled NPG at eta = 10 was chaotic while its solver inverted rounding noise (steps of 1e6); fixed, its
    rows are compared at bit-level tolerances, and the one-ulp test above passes with them so compared."""
    settings = golden.load_settings(golden.Path(__file__).resolve().parents[1] / "experiments" / "golden")
    for spec in ("tabular_rebel_vs_npg", "linear_rebel_vs_npg", "tabular_kl_regularised"):
        assert golden.chaotic_algorithms(settings, spec) == set()
    assert golden.chaotic_algorithms(settings, "frontier") == {"ppo(beta=0.1)", "ppo(beta=0.3)"}


def test_seed_interval_is_the_t_interval_of_a_difference_of_means():
    # n = 5 seeds, sd 0.1, 99.9 %: t_{4, 0.9995} = 8.6103 (tables), sqrt(2/5) = 0.63246
    assert golden.seed_interval(0.1, 5, 0.999) == pytest.approx(8.6103 * 0.1 * np.sqrt(0.4), rel=1e-4)
    assert golden.seed_interval(0.1, 1, 0.999) == 0.0


def test_chaotic_rows_pass_within_the_interval_and_fail_beyond_it():
    tol = {c: {"rtol": 1e-6, "atol": 1e-9} for c in golden.VALUES}
    row = {"problem": "p", "algorithm": "npg", "iteration": 5, **{c: None for c in golden.VALUES}, "reward": 0.5}
    ci = golden.seed_interval(0.01, 5, 0.999)
    inside = dict(row, reward=0.5 + 0.9 * ci, _n=5, _sd={"reward": 0.01})
    outside = dict(row, reward=0.5 + 1.1 * ci, _n=5, _sd={"reward": 0.01})
    assert golden.compare([row], [inside], tol, {"npg"}) == []
    assert len(golden.compare([row], [inside], tol)) == 1  # not chaotic: bit-level tolerance
    d = golden.compare([row], [outside], tol, {"npg"})
    assert len(d) == 1 and "seed CI" in d[0]["tolerance"]
    # deterministic across seeds (sd 0: counts, iteration 0) stays exact even for a chaotic run
    counts = dict(row, samples=100.0)
    assert len(golden.compare([counts], [dict(counts, samples=101.0, _n=5, _sd={"samples": 0.0})], tol, {"npg"})) == 1


def test_drifting_rows_get_their_relative_tolerance_and_no_more():
    """An exact run on a neutral cycle (tolerances.yaml ``drifting``): 3e-5 relative (the measured drift)
    passes at its rtol 1e-3; 2e-3 fails, with the widened tolerance in the diff; other rows keep theirs."""
    tol = {c: {"rtol": 1e-5, "atol": 1e-9} for c in golden.VALUES}
    row = {"problem": "rps", "algorithm": "rebel_pref-exact", "iteration": 1500,
           **{c: None for c in golden.VALUES}, "exploitability_avg": 0.00855496}
    drift = golden.drifting_algorithms({"drifting": {"rows": [
        {"spec": "pref_simplex", "algorithm": "rebel_pref-exact", "rtol": 1e-3}]}}, "pref_simplex")
    assert drift == {"rebel_pref-exact": 1e-3}
    near = dict(row, exploitability_avg=0.00855496 * (1 + 3e-5))
    far = dict(row, exploitability_avg=0.00855496 * (1 + 2e-3))
    assert golden.compare([row], [near], tol, drifting=drift) == []
    assert len(golden.compare([row], [near], tol)) == 1
    d = golden.compare([row], [far], tol, drifting=drift)
    assert len(d) == 1 and "0.001·|golden|" in d[0]["tolerance"]
    other = dict(row, algorithm="sppo-exact")
    assert len(golden.compare([other], [dict(other, exploitability_avg=near["exploitability_avg"])], tol,
                              drifting=drift)) == 1
