"""pytest-benchmark: one exact tabular REBEL iteration at |X| = |Y| = 1000 vs the bare numpy bound.

Run with ``tox -e bench`` (or ``pytest tests/benchmarks --benchmark-only``); the ratio is
printed by ``python tests/benchmarks/ratios.py``. No timing assertions live in the unit tests.
"""

import numpy as np
from common import bare_numpy_step, exact_workload, rebel_step


def test_bench_bare_numpy_logsoftmax(benchmark):
    problem, policy, _ = exact_workload()
    out = benchmark(bare_numpy_step, policy.params, problem.rewards)
    assert out.shape == (1000, 1000)


def test_bench_exact_tabular_rebel_iteration(benchmark):
    problem, policy, algo = exact_workload()
    new = benchmark(rebel_step, policy, algo)
    np.testing.assert_allclose(new.log_probs(), bare_numpy_step(policy.params, problem.rewards), atol=1e-10)
