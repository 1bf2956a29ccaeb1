"""Print cost ratios measured side by side in one run (interleaved, median of repeats).

    python tests/benchmarks/ratios.py [--quick] [--skip-reproduce] [--claims-overhead] [--only-issue19]
    python tests/benchmarks/ratios.py --only-reproduce --baseline OLD_CHECKOUT [--reproduce-repeats R]

Targets (issues: bandit foundation, performance):
  1. one exact tabular REBEL / NPG iteration at |X| = |Y| = 1000 costs at most 2x a bare numpy
     ``logits + eta*r`` followed by a log-softmax over the same array;
  2. 1000 seeds x 1000 iterations of exact tabular REBEL on a 10 x 10 instance run at least 20x faster
     batched (one stack) than as a loop of per-seed runs (same rows, checked here too);
  3. sampled REBEL / PPO / online DPO iteration cost on the MLP policy with equal samples (reported
     as ratios to REBEL; no target);
  4. ``testbed reproduce`` (every bandit figure, default --jobs = one per core) in under 2 minutes;
  5. (``--claims-overhead``) ``testbed reproduce`` with the claims studies of issue 16 at most 2x the
     same command without them;
  6.-8. issue 19's workloads (tests/benchmarks/issue19.py): stacked vs per-seed sampled modes,
     the exact log-linear step vs its numpy floor with a scaling table, start-up without torch;
  with ``--baseline DIR`` (a checkout of the code before a change) workload 4 runs the baseline's specs with both
     trees, interleaved (``--reproduce-repeats R``), and reports after / before (issue 19's target: <= 0.7).
Exits 1 if a target is missed. ``--quick`` shrinks workload 2 to 100 seeds x 200 iterations and
takes one repeat of 6-7.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import SAMPLED, SIZE, bare_numpy_step, exact_step, exact_workload, sampled_workload, seed_plans  # noqa: E402
from issue19 import batched_modes, exact_loglinear, startup, timed  # noqa: E402

from testbed.experiments.runner import run_batch, run_one  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def interleaved(fns: dict, repeats: int = 30) -> dict[str, float]:
    """Median seconds of each function, run in turn ``repeats`` times (issue19.timed)."""
    return {k: float(np.median(v)) for k, v in timed(fns, repeats).items()}


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def exact_vs_bare() -> bool:
    ok = True
    problem, policy, rebel = exact_workload(algorithm="rebel")
    _, _, npg = exact_workload(algorithm="npg")
    fns = {"bare": lambda: bare_numpy_step(policy.params, problem.rewards),
           "rebel": lambda: exact_step(policy, rebel), "npg": lambda: exact_step(policy, npg)}
    for f in fns.values():  # warm-up
        f()
    t = interleaved(fns)
    for name in ("rebel", "npg"):
        ratio = t[name] / t["bare"]
        ok &= ratio <= 2.0
        print(f"1. exact tabular {name.upper()} iteration, |X| = |Y| = {SIZE}: {t[name] * 1e3:.2f} ms; bare numpy "
              f"logits + eta*r + log-softmax: {t['bare'] * 1e3:.2f} ms; ratio {ratio:.2f}x (target <= 2x) {verdict(ratio <= 2)}")
    return ok


def batched_vs_loop(seeds: int, iterations: int) -> bool:
    plans, problems = seed_plans(seeds, iterations)
    t0 = time.perf_counter()
    batched = run_batch(plans, problems)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [run_one(p, q) for p, q in zip(plans, problems)]
    t_loop = time.perf_counter() - t0
    same = all(a[0] == b[0] and np.array_equal(a[1].params, b[1].params) for a, b in zip(batched, alone))
    speedup = t_loop / t_batch
    ok = speedup >= 20 and same
    print(f"2. {seeds} seeds x {iterations} iterations of exact tabular REBEL, 10 x 10 (metrics every 100): "
          f"per-seed loop {t_loop:.2f} s, batched {t_batch:.3f} s; batched {speedup:.1f}x faster (target >= 20x) "
          f"{verdict(ok)}; identical rows and policies: {same}")
    return ok


def sampled_costs() -> None:
    work = {name: sampled_workload(name) for name in SAMPLED}
    state = {name: w[0] for name, w in work.items()}

    def step(name):
        policy, algo, rng = work[name]
        state[name] = algo.update(state[name], rng).policy

    for name in work:
        step(name)  # warm-up (Adam's first step imports torch's compiler stack)
    t = interleaved({name: (lambda n=name: step(n)) for name in work}, repeats=15)
    print("3. sampled iteration on the MLP policy (hidden 32), default 20 x 10 problem, 500 responses, 4 epochs "
          "of minibatch-64 Adam:")
    for name in work:
        print(f"   {name:6s} {t[name] * 1e3:8.1f} ms/iteration   ratio to REBEL {t[name] / t['rebel']:.2f}x")


def _reproduce(tmp: str, tree: Path, experiments: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(tree), MPLBACKEND="Agg")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "testbed.cli", "reproduce", "--quiet", "--runs", f"{tmp}/runs",
                          "--figures", f"{tmp}/figures", "--experiments", str(experiments)], cwd=tree,
                         capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, out


def reproduce_time(baseline: Path | None = None, repeats: int = 1) -> bool:
    """Workload 4. With a baseline checkout both trees run the *baseline's* experiments/ (the same specs: old code
    against new), ``repeats`` times interleaved; the ratio is of the medians."""
    experiments = (baseline or ROOT) / "experiments"
    walls: dict[str, list[float]] = {}
    for _ in range(repeats if baseline is not None else 1):
        for name, tree in (("before", baseline), ("after", ROOT)):
            if tree is None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                wall, out = _reproduce(tmp, tree, experiments)
            if out.returncode != 0:
                print(f"4. testbed reproduce ({name}) failed: {out.stderr.strip()[-500:]}")
                return False
            walls.setdefault(name, []).append(wall)
    wall = float(np.median(walls["after"]))
    specs = re.findall(r"^(\w+): \d+ runs done at ([\d.]+)s", out.stderr, flags=re.M)
    ok = wall < 120
    print(f"4. testbed reproduce ({experiments}, --jobs {os.cpu_count()}): {wall:.1f} s (target < 120 s) "
          f"{verdict(ok)}; specs (overlapped) finished at: " + ", ".join(f"{n} {float(s):.1f} s" for n, s in specs))
    if baseline is not None:
        before = float(np.median(walls["before"]))
        ratio = wall / before
        ok &= ratio <= 0.7
        print(f"   before ({baseline}): {before:.1f} s; after / before {ratio:.2f} (target <= 0.7) {verdict(ratio <= 0.7)}"
              f"; {repeats} interleaved repeat(s): before {', '.join(f'{w:.1f}' for w in walls['before'])} s, "
              f"after {', '.join(f'{w:.1f}' for w in walls['after'])} s; load average {os.getloadavg()[0]:.2f}")
    return ok


CLAIMS_SPECS = ("compare_tuned.yaml", "compare_tuned_mlp.yaml", "rebel_error_vs_n.yaml")  # issue 16's studies


def claims_overhead() -> bool:
    """``testbed reproduce`` with the claims studies (tuned comparisons, error vs N, figures/claims.md)
    against the same command on a copy of experiments/ without them: target ≤ 2×."""
    import shutil

    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        without = Path(tmp) / "experiments"
        shutil.copytree(ROOT / "experiments", without, ignore=shutil.ignore_patterns(*CLAIMS_SPECS))
        for name, exp in (("without", without), ("with", ROOT / "experiments")):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "testbed.cli", "reproduce", "--quiet", "--experiments", str(exp),
                                  "--runs", f"{tmp}/runs-{name}", "--figures", f"{tmp}/figures-{name}"], cwd=ROOT,
                                 capture_output=True, text=True)
            walls[name] = time.perf_counter() - t0
            if out.returncode != 0:
                print(f"5. testbed reproduce ({name} the claims studies) failed: {out.stderr.strip()}")
                return False
    ratio = walls["with"] / walls["without"]
    print(f"5. testbed reproduce with the claims studies {walls['with']:.1f} s vs without {walls['without']:.1f} s: "
          f"{ratio:.2f}x (target <= 2x) {verdict(ratio <= 2)}")
    return ratio <= 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="workload 2 at 100 seeds x 200 iterations")
    ap.add_argument("--skip-reproduce", action="store_true", help="leave out workload 4 (minutes)")
    ap.add_argument("--claims-overhead", action="store_true", help="also workload 5: reproduce with vs without the "
                    "claims studies (two reproduce runs, minutes)")
    ap.add_argument("--baseline", type=Path, help="a checkout of the code before a change: workload 4 for both, "
                    "on the baseline's experiments/")
    ap.add_argument("--reproduce-repeats", type=int, default=1, metavar="R", help="with --baseline: R interleaved "
                    "repeats of workload 4 per tree (medians)")
    ap.add_argument("--only-issue19", action="store_true", help="workloads 6-8 only")
    ap.add_argument("--only-reproduce", action="store_true", help="workload 4 only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"numpy {np.__version__}, torch {torch.__version__}")
    repeats = 1 if args.quick else 3
    if args.only_reproduce:
        return 0 if reproduce_time(args.baseline, args.reproduce_repeats) else 1
    if args.only_issue19:
        ok = batched_modes(repeats=repeats) & exact_loglinear(repeats) & startup()
        return 0 if ok else 1
    ok = exact_vs_bare()
    ok &= batched_vs_loop(100, 200) if args.quick else batched_vs_loop(1000, 1000)
    sampled_costs()
    ok &= batched_modes(repeats=repeats)
    ok &= exact_loglinear(repeats)
    ok &= startup()
    if not args.skip_reproduce:
        ok &= reproduce_time(args.baseline, args.reproduce_repeats)
    if args.claims_overhead:
        ok &= claims_overhead()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
