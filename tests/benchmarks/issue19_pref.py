"""Issue 19, workload 6 on preference problems: a stack of 64 seeds x 10 iterations of each preference
algorithm's mode (a 20 x 10 random-raters preference problem, 250 pairs / 500 responses) against the per-seed
loop: target >= 20x, identical rows, policies and average iterates. Printed by issue19.batched_modes (and
ratios.py); alone: ``python tests/benchmarks/issue19.py --only-preference``."""

from testbed.problems import make_preference

PREFERENCE_MODES = {  # label: (algorithm, config)
    "Hedge": ("hedge", {"eta": 0.1}),
    "optimistic Hedge": ("optimistic_hedge", {"eta": 0.1}),
    "Nash-MD": ("nash_md", {"tau": 0.1}),
    "REBEL-pref exact": ("rebel_pref", {"mode": "exact", "eta": 0.5}),
    "REBEL-pref sampled pair": ("rebel_pref", {"mode": "sampled", "pairs": 250, "eta": 0.5}),
    "REBEL-pref sampled self-play": ("rebel_pref", {"mode": "sampled", "pairs": 250, "eta": 0.5,
                                                    "target": "self_play"}),
    "SPPO exact": ("sppo", {"mode": "exact"}),
    "SPPO sampled": ("sppo", {"mode": "sampled", "samples": 500, "epochs": 4, "minibatch": 64}),
    "BT-REBEL population": ("bt_rebel", {"eta": 0.5}),
    "BT-REBEL sampled": ("bt_rebel", {"eta": 0.5, "mode": "sampled", "pairs": 250, "reward_model": "sampled",
                                      "dataset": 500}),
    "DPO preference online": ("dpo", {"labels": "preference", "mode": "online", "pairs": 250, "epochs": 4,
                                      "minibatch": 64}),
    "DPO preference offline": ("dpo", {"labels": "preference", "mode": "offline", "pairs": 250, "epochs": 4,
                                       "minibatch": 64}),
}


def preference_modes(compare_modes, seeds: int = 64, iterations: int = 10, repeats: int = 3, modes=None) -> bool:
    """Each preference mode (or those labelled in ``modes``) stacked vs the per-seed loop, by issue19's
    ``compare_modes`` (the bandit modes' measurement: rows, with the exploitability of both iterates, and
    policies compared)."""
    problem = make_preference("raters", contexts=20, actions=10, raters=3, seed=0)
    print(f"   preference algorithms, 20 x 10 random-raters problem, {seeds} seeds x {iterations} iterations:")
    chosen = {k: v for k, v in PREFERENCE_MODES.items() if not modes or k in modes}
    return compare_modes(problem, chosen, seeds, iterations, repeats,
                         instances=lambda s: make_preference("raters", contexts=20, actions=10, raters=3, seed=s))
