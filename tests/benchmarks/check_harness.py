"""Run time of `testbed check`: the built-ins' batteries, the reference rule's, the mutation table's step checks,
and the LM battery of the LM reference rule and its mutants.

    python tests/benchmarks/check_harness.py
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `python tests/benchmarks/check_harness.py` from the root

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
    try:
        import transformers  # noqa: F401
    except ImportError:  # the llm extra is missing: no LM rows
        print("LM battery: skipped (the llm extra is not installed)")
        raise SystemExit(0) from None
    import testbed.llm.conformance  # noqa: F401  (registers the LM rows)
    import tests.lm_rules as lm
    LM = RULES.with_name("lm_rules.py")
    secs, res = timed(lambda: run_checks(load_rule(f"{LM}:LMRebel")))
    print(f"{'LMRebel (LM battery)':<30} {len(res):3d} checks  {sum(r.passed for r in res):3d} pass  {secs:6.1f} s")
    names = [n for n, c in vars(lm).items() if isinstance(c, type) and issubclass(c, lm.LMRebel) and n != "LMRebel"]
    secs, out = timed(lambda: {n: run_checks(load_rule(f"{LM}:{n}")) for n in names})
    rejected = sum(not all(r.passed for r in res) for res in out.values())
    print(f"LM battery of {len(names)} LM mutants: {rejected} rejected, {secs:.1f} s")
