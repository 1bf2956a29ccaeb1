"""One ``plot:`` entry of a spec → one figure: an explicit table of kinds (no name lookups)."""

from __future__ import annotations

from pathlib import Path

from testbed.plotting import aggregate, curves, preference
from testbed.plotting.common import listed_runs, read_config


def _preference(fn, with_context: bool):
    def draw_it(run_dir, entry, out):
        extra = {"context": entry.get("context", 0)} if with_context else {}
        config = read_config(Path(run_dir))
        listed_runs(Path(run_dir), config)  # (the metrics rows are read by the figures that draw them)
        return fn(Path(run_dir), config, out, **extra)
    return draw_it


KINDS = {
    "curve": lambda run_dir, entry, out: curves.plot_run(run_dir, out, entry.get("panel_by"), entry.get("x"),
                                                         entry.get("y")),
    "frontier": lambda run_dir, entry, out: curves.plot_frontier(run_dir, out),
    "sensitivity": lambda run_dir, entry, out: curves.plot_sensitivity(run_dir, out),
    "table": lambda run_dir, entry, out: curves.results_table(run_dir, out),
    "simplex": _preference(preference.plot_simplex, True),
    "exploitability": _preference(preference.plot_exploitability, False),
    "eps_sweep": _preference(preference.plot_eps_sweep, True),
    "tuned_table": lambda run_dir, entry, out: aggregate.tuned_table(run_dir, out),
    "aggregate": lambda run_dir, entry, out: aggregate.plot_aggregate(run_dir, out),
}
MARKDOWN = {"table", "tuned_table"}
"""The kinds that write a markdown table, not a figure."""


def draw(run_dir: str | Path, entry: dict, out: str | Path) -> Path:
    """Draw one ``plot:`` entry of a spec to ``out`` (kind: curve, frontier, sensitivity, table, simplex,
    exploitability, eps_sweep, tuned_table, aggregate)."""
    return KINDS[entry.get("kind", "curve")](run_dir, entry, out)
