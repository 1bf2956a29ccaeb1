"""Workloads of the performance issue (19), printed by ratios.py: every ratio measured side by side in
one run (interleaved repeats, medians, spread ±(max - min) / (2·median)).

6. a stack of 64 seeds x 10 iterations of each batchable sampled mode (20 x 10 tabular problem,
   250 pairs / 500 responses) against the per-seed loop: target >= 20x, identical rows and policies; and of
   each preference algorithm's mode (issue19_pref.py); alone: ``python tests/benchmarks/issue19.py
   --only-preference [--quick]`` or ``--mode LABEL ...`` (bandit or preference labels);
7. the exact log-linear REBEL (y' uniform) and NPG step at X = 1000, Y = 100, d = 64 on a misspecified
   problem against the numpy floor (the weighted centred second moments by ``einsum(optimize=True)``
   and one ``solve`` of the same system): target <= 2x; and the step's cost over X·Y·d = 1e4 … 1e7;
8. start-up: ``testbed --help`` and ``testbed plot`` import no torch (``python -X importtime``).
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from testbed.algorithms import ALGORITHMS, build_config
from testbed.experiments.runner import run_batch, run_one
from testbed.experiments.spec import RunPlan
from testbed.policies import LogLinear
from testbed.problems import make_linear, make_tabular

sys.path.insert(0, str(Path(__file__).resolve().parent))
from issue19_pref import PREFERENCE_MODES, preference_modes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODES = {  # label: (algorithm, config): every batchable sampled mode, at the issue's sizes
    "REBEL sampled least squares": ("rebel", {"mode": "sampled", "pairs": 250}),
    "NPG sampled Fisher": ("npg", {"mode": "sampled", "samples": 500}),
    "REBEL sampled Adam": ("rebel", {"mode": "sampled", "solver": "adam", "pairs": 250, "epochs": 4, "minibatch": 64}),
    "PPO": ("ppo", {"batch": 500, "epochs": 4, "minibatch": 64}),
    "DPO online": ("dpo", {"mode": "online", "pairs": 250, "epochs": 4, "minibatch": 64}),
}


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def timed(fns: dict, repeats: int) -> dict[str, list[float]]:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def med(v: list[float]) -> float:
    return float(np.median(v))


def spread(v: list[float]) -> str:
    return f"±{(max(v) - min(v)) / med(v) * 50:.0f}%" if len(v) > 1 else "(1 repeat)"


def _stack_vs_loop(problems, name, cfg, seeds, iterations, repeats):
    """One stack of ``seeds`` runs vs the per-seed loop; ``problems``: one problem (every seed's) or one per seed."""
    problems = problems if isinstance(problems, list) else [problems] * seeds
    plans = [RunPlan(f"s{s}", p.name, name, name, name, cfg, {}, None, s, iterations, iterations)
             for s, p in enumerate(problems)]
    warm = [RunPlan(f"w{s}", problems[s].name, name, name, name, cfg, {}, None, s, 1, 1) for s in range(2)]
    run_batch(warm, problems[:2]), run_one(warm[0], problems[0])  # warm-up, untimed (torch's first calls cost ~1.5 s)
    out = {}
    t = timed({"batched": lambda: out.__setitem__("b", run_batch(plans, problems)),
               "loop": lambda: out.__setitem__("l", [run_one(p, q) for p, q in zip(plans, problems)])}, repeats)
    same = all(a[0] == b[0] and np.array_equal(a[1].params, b[1].params) for a, b in zip(out["b"], out["l"]))
    return t, same


def batched_modes(seeds: int = 64, iterations: int = 10, repeats: int = 3) -> bool:
    problem = make_tabular(contexts=20, actions=10, seed=0)
    print(f"6. {seeds} seeds x {iterations} iterations, 20 x 10 tabular problem: one stack vs the per-seed loop "
          f"({repeats} interleaved repeats, medians):")
    ok = compare_modes(problem, MODES, seeds, iterations, repeats,
                       instances=lambda s: make_tabular(contexts=20, actions=10, seed=s))
    return ok & preference_modes(compare_modes, seeds, iterations, repeats)


def compare_modes(problem, modes: dict, seeds: int, iterations: int, repeats: int, instances=None) -> bool:
    """Each mode of ``modes`` (label: (algorithm, config)) on ``problem``: one stack vs the per-seed loop, printed.
    A configuration that draws nothing (``Algorithm.draws`` False: its seeds on one problem are one computation,
    run once) is also measured on ``seeds`` distinct instances (``instances(s)``, s = 0 … seeds - 1), where each
    member is computed: that line shows the stacked array work itself (printed, no target)."""
    ok = True
    for label, (name, cfg) in modes.items():
        t, same = _stack_vs_loop(problem, name, cfg, seeds, iterations, repeats)
        ratio = med(t["loop"]) / med(t["batched"])
        good = ratio >= 20 and same
        ok &= good
        cls = ALGORITHMS[name]
        shared = not cls.draws(build_config(cls.Config, cfg, label))
        print(f"   {label:28s} loop {med(t['loop']):7.2f} s {spread(t['loop']):>5s}, batched {med(t['batched']):6.3f} s "
              f"{spread(t['batched']):>5s}: {ratio:5.1f}x (target >= 20x) {verdict(good)}; identical: {same}"
              + ("; draws nothing: the seeds are one computation" if shared else ""))
        if shared and instances is not None:
            t, same = _stack_vs_loop([instances(s) for s in range(seeds)], name, cfg, seeds, iterations, repeats)
            ok &= same
            print(f"   {'':28s} {seeds} distinct instances: loop {med(t['loop']):7.2f} s {spread(t['loop']):>5s}, batched "
                  f"{med(t['batched']):6.3f} s {spread(t['batched']):>5s}: {med(t['loop']) / med(t['batched']):5.1f}x "
                  f"(every member computed; no target); identical: {same}")
    return ok


def _exact_problem(X, Y, d):
    problem = make_linear(contexts=X, actions=Y, dim=d, seed=0, misspecification=0.2)
    policy = LogLinear(problem.features, np.random.default_rng(1).normal(size=d))
    return problem, policy


def _algo(name, problem):
    cls = ALGORITHMS[name]
    extra = {"y_prime": "uniform"} if name == "rebel" else {}
    return cls(build_config(cls.Config, {"mode": "exact", "eta": 1.0, **extra}, "bench"), problem, None)


def numpy_floor(problem, policy, mu=None):
    """The same normal equations in plain numpy: E_x Cov_pi(φ) (+ Cov_mu(φ) + the mean-difference outer
    product for REBEL) and its right-hand side by einsum(optimize=True), one solve."""
    rho, phi, r = problem.rho, problem.features, problem.rewards
    p = policy.probs()

    def moments(w):
        m = np.einsum("xy,xyd->xd", w, phi)
        c = phi - m[:, None, :]
        e = np.sum(w * r, axis=-1)
        A = np.einsum("x,xy,xyd,xye->de", rho, w, c, c, optimize=True)
        b = np.einsum("x,xy,xyd,xy->d", rho, w, c, r - e[:, None], optimize=True)
        return A, b, m, e

    A, b, m1, e1 = moments(p)
    if mu is not None:
        A2, b2, m2, e2 = moments(mu)
        dm = m1 - m2
        A = A + A2 + np.einsum("x,xd,xe->de", rho, dm, dm, optimize=True)
        b = b + b2 + np.einsum("x,xd,x->d", rho, dm, e1 - e2, optimize=True)
    return np.linalg.solve(A, b)


def exact_loglinear(repeats: int = 3) -> bool:
    ok = True
    problem, policy = _exact_problem(1000, 100, 64)
    mu = np.full(problem.rewards.shape, 1 / 100)
    algos = {n: _algo(n, problem) for n in ("rebel", "npg")}
    fns = {"rebel": lambda: algos["rebel"].update(policy, None), "npg": lambda: algos["npg"].update(policy, None),
           "floor rebel": lambda: numpy_floor(problem, policy, mu), "floor npg": lambda: numpy_floor(problem, policy)}
    for fn in fns.values():  # one untimed call each: the first to allocate its 50 MB temporaries pays their page
        fn()                 # faults (glibc then serves them from the heap), 0.6 s instead of 0.17 s for REBEL
    t = timed(fns, repeats)
    step = {n: algos[n].update(policy, None).policy.params - policy.params for n in algos}
    for name in ("rebel", "npg"):
        floor = numpy_floor(problem, policy, mu if name == "rebel" else None)
        err = np.abs(step[name] - floor).max() / np.abs(floor).max()
        ratio = med(t[name]) / med(t[f"floor {name}"])
        ok &= ratio <= 2
        print(f"7. exact log-linear {name.upper()} step, X = 1000, Y = 100, d = 64: {med(t[name]):.3f} s {spread(t[name])}; "
              f"numpy floor {med(t[f'floor {name}']):.3f} s {spread(t[f'floor {name}'])}; ratio {ratio:.2f}x "
              f"(target <= 2x) {verdict(ratio <= 2)}; step vs floor's solution: {err:.1e} relative")
    print("   scaling (NPG step, Y = 100, d = 64; X varied): X·Y·d entries, seconds, ns per entry")
    per = []
    for X in (2, 16, 156, 1563):
        problem, policy = _exact_problem(X, 100, 64)
        algo = _algo("npg", problem)
        algo.update(policy, None)
        s = med(timed({"s": lambda a=algo, p=policy: a.update(p, None)}, repeats)["s"])
        n = X * 100 * 64
        per.append(s / n * 1e9)
        print(f"   {n:10.1e} {s:9.4f} s {per[-1]:7.1f} ns")
    print(f"   ns per entry, largest / middle size: {per[-1] / per[-2]:.2f} (linear cost: about 1; small sizes "
          f"pay the fixed per-call overhead)")
    return ok


def _imports(args: list[str], env: dict) -> tuple[bool, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "testbed.cli", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    modules = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")]
    return "torch" in modules, wall


def startup() -> bool:
    env = dict(os.environ, MPLBACKEND="Agg")
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "s.yaml"
        spec.write_text("name: s\nproblems: [{kind: tabular, contexts: 3, actions: 2}]\n"
                        "algorithms: [{name: rebel}]\nseeds: 1\niterations: 2\n")
        subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(spec), "--out", f"{tmp}/run", "--quiet"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        help_torch, help_wall = _imports(["--help"], env)
        plot_torch, plot_wall = _imports(["plot", f"{tmp}/run", "--out", f"{tmp}/p.png"], env)
    ok = not help_torch and not plot_torch
    print(f"8. start-up: testbed --help {help_wall:.2f} s, imports torch: {help_torch}; testbed plot {plot_wall:.2f} s, "
          f"imports torch: {plot_torch} (target: neither) {verdict(ok)}")
    return ok


if __name__ == "__main__":
    import argparse

    import torch

    ap = argparse.ArgumentParser(description="issue 19's workloads 6-8 (ratios.py prints them all)")
    ap.add_argument("--only-preference", action="store_true", help="workload 6's preference algorithms only")
    ap.add_argument("--mode", action="append", choices=sorted(MODES | PREFERENCE_MODES),
                    help="workload 6 for these modes only (repeatable; bandit and preference labels)")
    ap.add_argument("--quick", action="store_true", help="1 repeat instead of 3")
    ap.add_argument("--iterations", type=int, default=10, help="workload 6: iterations per run (10)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reps = 1 if args.quick else 3
    if args.only_preference or args.mode:
        print(f"load average: {os.getloadavg()}")
        bandit = {m: MODES[m] for m in args.mode or [] if m in MODES}
        pref = [m for m in args.mode or [] if m in PREFERENCE_MODES]
        ok = compare_modes(make_tabular(contexts=20, actions=10, seed=0), bandit, 64, args.iterations, reps,
                           instances=lambda s: make_tabular(contexts=20, actions=10, seed=s))
        if pref or args.only_preference:  # no labels: every preference mode but the slow ones
            ok &= preference_modes(compare_modes, iterations=args.iterations, repeats=reps, modes=pref or None)
        print(f"load average: {os.getloadavg()}")
        sys.exit(0 if ok else 1)
    sys.exit(0 if batched_modes(repeats=reps) & exact_loglinear(reps) & startup() else 1)
