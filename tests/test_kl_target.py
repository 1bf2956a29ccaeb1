"""kl_reg_gap measures the gap to the algorithm's own exact target (issue 14, item 7): 0 at the exact
optimum of DPO at two Bradley–Terry temperatures and of IPO, run through the runner."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from testbed.cli import main
from testbed.experiments import read_metrics

REWARDS = [[0.0, 1.0, 0.5, 0.2], [0.3, 0.0, 0.9, 0.6]]
REF = [[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]


def closed_form_dpo_gap_at_ref(beta: float, s: float) -> float:
    """c·E_x KL(pi_ref || pi*_c), c = beta·s, pi*_c ∝ pi_ref·exp(r/c), uniform rho: computed by hand."""
    c = beta * s
    r, ref = np.array(REWARDS), np.array(REF)
    star = ref * np.exp(r / c)
    star /= star.sum(axis=1, keepdims=True)
    return c * float(np.mean(np.sum(ref * np.log(ref / star), axis=1)))


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("klt")
    np.savez(root / "p.npz", rewards=np.array(REWARDS), pi_ref=np.array(REF))
    spec = {"name": "kl_target", "problems": [{"file": "p.npz"}],
            "algorithms": [{"name": "dpo", "mode": "population", "beta": 0.5, "temperature": 1.0, "label": "dpo-s1"},
                           {"name": "dpo", "mode": "population", "beta": 0.5, "temperature": 4.0, "label": "dpo-s4"},
                           {"name": "dpo", "mode": "population", "loss": "ipo", "beta": 0.5, "label": "ipo"}],
            "seeds": 1, "iterations": 60, "eval_every": 60}
    (root / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(root / "s.yaml"), "--out", str(root / "o"), "--quiet"]) == 0
    return {(r["algorithm"], r["iteration"]): r for r in read_metrics(root / "o")}


@pytest.mark.parametrize("label", ["dpo-s1", "dpo-s4", "ipo"])
def test_gap_is_zero_at_the_exact_optimum(rows, label):
    assert rows[(label, 0)]["kl_reg_gap"] > 1e-3
    assert abs(rows[(label, 60)]["kl_reg_gap"]) < 1e-12


@pytest.mark.parametrize("label,s", [("dpo-s1", 1.0), ("dpo-s4", 4.0)])
def test_dpo_gap_uses_beta_times_temperature(rows, label, s):
    assert rows[(label, 0)]["kl_reg_gap"] == pytest.approx(closed_form_dpo_gap_at_ref(0.5, s), rel=1e-10)
