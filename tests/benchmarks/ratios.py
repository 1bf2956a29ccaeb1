"""Print cost ratios measured side by side in one run (interleaved, median of repeats).

    python tests/benchmarks/ratios.py

Target (issue: bandit foundation): one exact tabular REBEL iteration at |X| = |Y| = 1000 costs at
most 3x a bare numpy ``logits + eta*r`` followed by a log-softmax over the same array.
Exits 1 if a target is missed.
"""

import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import SIZE, bare_numpy_step, exact_workload, rebel_step  # noqa: E402


def interleaved(fns: dict, repeats: int = 30) -> dict[str, float]:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> int:
    problem, policy, algo = exact_workload()
    for _ in range(3):  # warm-up
        bare_numpy_step(policy.params, problem.rewards)
        rebel_step(policy, algo)
    t = interleaved({"bare": lambda: bare_numpy_step(policy.params, problem.rewards),
                     "rebel": lambda: rebel_step(policy, algo)})
    ratio = t["rebel"] / t["bare"]
    ok = ratio <= 3.0
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"exact tabular REBEL iteration, |X| = |Y| = {SIZE}: {t['rebel'] * 1e3:.2f} ms; "
          f"bare numpy logits + eta*r + log-softmax: {t['bare'] * 1e3:.2f} ms; "
          f"ratio {ratio:.2f}x (target <= 3x) {'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
