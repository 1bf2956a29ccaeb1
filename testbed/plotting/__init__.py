"""Figures from run folders (bsuite style): every function takes a run folder or its tables, never live
objects; nothing here imports torch or an algorithm (an import-linter contract in pyproject.toml).

``common`` (reading, seed bands, saving) · ``curves`` (metric curves, KL frontier, sensitivity, results
table) · ``preference`` (simplex, exploitability, eps sweep) · ``llm`` (LM reward/KL, win rate, table) ·
``draw`` (a spec's ``plot:`` entry → the function of its kind).
"""

from testbed.plotting.common import read_config, save_figure, seed_band
from testbed.plotting.curves import plot_frontier, plot_run, plot_sensitivity, results_table
from testbed.plotting.draw import KINDS, draw

__all__ = ["KINDS", "draw", "plot_frontier", "plot_run", "plot_sensitivity", "read_config", "results_table",
           "save_figure", "seed_band"]
