"""pytest-benchmark: the workloads of ``ratios.py`` one by one (exact 1000 x 1000 iterations and their
bare numpy bound, a stack of seeds vs a loop of per-seed runs, one sampled iteration on the MLP policy).

Run with ``tox -e bench`` (or ``pytest tests/benchmarks --benchmark-only``); the ratios measured side
by side are printed by ``python tests/benchmarks/ratios.py``. No timing assertions live in the unit tests.
"""

import numpy as np
import pytest
from common import SAMPLED, bare_numpy_step, exact_step, exact_workload, sampled_workload, seed_plans

from testbed.experiments.runner import run_batch, run_one


def test_bench_bare_numpy_logsoftmax(benchmark):
    problem, policy, _ = exact_workload()
    out = benchmark(bare_numpy_step, policy.params, problem.rewards)
    assert out.shape == (1000, 1000)


@pytest.mark.parametrize("algorithm", ["rebel", "npg"])
def test_bench_exact_tabular_iteration(benchmark, algorithm):
    problem, policy, algo = exact_workload(algorithm=algorithm)
    new = benchmark(exact_step, policy, algo)
    np.testing.assert_allclose(new.log_probs(), bare_numpy_step(policy.params, problem.rewards), atol=1e-10)


def test_bench_100_seeds_batched(benchmark):
    plans, problems = seed_plans(100, 100)
    out = benchmark(run_batch, plans, problems)
    assert out[0][0] == run_one(plans[0], problems[0])[0]


def test_bench_100_seeds_loop(benchmark):
    plans, problems = seed_plans(100, 100)
    out = benchmark(lambda: [run_one(p, q) for p, q in zip(plans, problems)])
    assert len(out) == 100


@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_bench_sampled_mlp_iteration(benchmark, name):
    policy, algo, rng = sampled_workload(name)
    step = benchmark(algo.update, policy, rng)
    assert step.samples == 500
