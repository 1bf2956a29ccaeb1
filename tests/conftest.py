import numpy as np
import pytest

from testbed.algorithms import ALGORITHMS, build_config


def make_algo(name: str, problem, rng=None, **params):
    cls = ALGORITHMS[name]
    return cls(build_config(cls.Config, params, name), problem, rng or np.random.default_rng(0))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_configure(config):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")


def mp_exact_update_log_probs(log_pi, pi_ref, rewards, eta, beta=0.0, dps=50):
    """The exact tabular REBEL/NPG step in closed form, computed in mpmath (independent of the package):
    ln pi' = log_softmax((1 - eta·beta)·ln pi + eta·beta·ln pi_ref + eta·r) per context (THEORY.md C; with
    beta > 0 the KL-shaped reward r - beta·(ln pi - ln pi_ref)). Every float64 input is taken exactly, the
    arithmetic is done at `dps` digits and the result rounded once to float64."""
    import mpmath as mp

    with mp.workdps(dps):
        e, b = mp.mpf(float(eta)), mp.mpf(float(beta))
        out = np.empty(np.shape(log_pi))
        for x in range(out.shape[0]):
            z = [(1 - e * b) * mp.mpf(float(lp)) + e * b * mp.log(mp.mpf(float(q))) + e * mp.mpf(float(rv))
                 for lp, q, rv in zip(log_pi[x], pi_ref[x], rewards[x])]
            top = max(z)
            lse = top + mp.log(mp.fsum(mp.exp(v - top) for v in z))
            out[x] = [float(v - lse) for v in z]
    return out


# ----- tiny run folders for `testbed plot` (tests/test_cli_errors.py, tests/test_plot_axes.py) -------------
BANDIT_RUN = """name: tiny
problems: [{kind: tabular, contexts: 2, actions: 3}]
algorithms: [{name: rebel, mode: sampled, pairs: 20}, {name: ppo, batch: 20}]
seeds: 2
iterations: 4
eval_every: 2
"""
PREFERENCE_RUN = """name: tinypref
problems: [{kind: preference, family: nlhf, eps: [0.0, 0.1]}]
algorithms: [{name: rebel_pref, mode: exact, eta: 0.5}]
iterations: 4
plot: {kind: eps_sweep}
"""


@pytest.fixture(scope="session")
def run_folders(tmp_path_factory):
    """Two real run folders (testbed run): a bandit one and a preference one."""
    root = tmp_path_factory.mktemp("plot-runs")
    from testbed.cli import main

    for name, text in (("bandit", BANDIT_RUN), ("preference", PREFERENCE_RUN)):
        (root / f"{name}.yaml").write_text(text)
        assert main(["run", str(root / f"{name}.yaml"), "--out", str(root / name), "--quiet"]) == 0
    return root
