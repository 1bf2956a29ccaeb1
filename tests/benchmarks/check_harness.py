"""Run time of `testbed check`: the built-ins' batteries, the reference rule's, and the mutation table's step checks.

    python tests/benchmarks/check_harness.py
"""

import time
from pathlib import Path

from testbed.experiments.conformance import Result, load_rule, run_checks
from testbed.experiments.conformance_exact import check_steps

RULES = Path(__file__).resolve().parents[1] / "conformance_mutants.py"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


if __name__ == "__main__":
    import tests.conformance_mutants as m

    for name in ("rebel", "npg"):
        secs, res = timed(lambda name=name: run_checks(load_rule(f"builtin:{name}")))
        print(f"builtin:{name:<22} {len(res):3d} checks  {sum(r.passed for r in res):3d} pass  {secs:6.1f} s")
    secs, res = timed(lambda: run_checks(load_rule(f"{RULES}:PopulationREBEL")))
    print(f"{'PopulationREBEL (full)':<30} {len(res):3d} checks  {sum(r.passed for r in res):3d} pass  {secs:6.1f} s")
    mutants = [n for n, c in vars(m).items() if isinstance(c, type) and issubclass(c, m.PopulationREBEL)]
    secs, out = timed(lambda: {n: check_steps(load_rule(f"{RULES}:{n}"), Result) for n in mutants})
    rejected = sum(not all(r.passed for r in res) for n, res in out.items() if n != "PopulationREBEL")
    print(f"step checks of {len(mutants)} rules: {rejected} of {len(mutants) - 1} mutants rejected, {secs:.1f} s")
