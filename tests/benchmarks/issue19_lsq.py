"""Workload 6 of issue 19 for the sampled least-squares modes alone (REBEL, NPG): a stack of 64 seeds x 10
iterations (20 x 10 tabular problem, 250 pairs / 500 responses) against the per-seed loop, interleaved
repeats, medians, the load average printed around it; ratios.py prints the same lines with every mode.

    python tests/benchmarks/issue19_lsq.py [--repeats R]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from issue19 import MODES, compare_modes  # noqa: E402

from testbed.problems import make_tabular  # noqa: E402

LSQ = ("REBEL sampled least squares", "NPG sampled Fisher")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load = lambda: open("/proc/loadavg").read().split()[:3]  # noqa: E731
    print(f"load average before: {load()}")
    problem = make_tabular(contexts=20, actions=10, seed=0)
    ok = compare_modes(problem, {label: MODES[label] for label in LSQ}, 64, 10, args.repeats)
    print(f"load average after: {load()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
