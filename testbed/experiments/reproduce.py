"""``testbed reproduce``: run every spec in experiments/ and draw its figure into figures/."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from testbed.errors import InputError
from testbed.experiments.runner import run_spec
from testbed.experiments.spec import load_spec
from testbed.plotting import draw


def outputs(spec_name: str, plots: list[dict]) -> list[tuple[dict, str]]:
    """File name of each plot entry: its ``name``, else <spec>.png for the first and <spec>-<kind> after."""
    names = []
    for i, entry in enumerate(plots):
        ext = ".md" if entry.get("kind") == "table" else ".png"
        stem = entry.get("name") or (spec_name if i == 0 else f"{spec_name}-{entry.get('kind', 'curve')}")
        names.append((entry, stem + ext))
    if len({n for _, n in names}) != len(names):
        raise InputError(f"spec {spec_name!r}: two plot entries write the same file; give them a 'name'")
    return names


def reproduce(experiments: str | Path = "experiments", figures: str | Path = "figures",
              runs: str | Path = "runs", only: list[str] | None = None, progress: bool = True,
              jobs: int = 1) -> list[Path]:
    experiments, figures, runs = Path(experiments), Path(figures), Path(runs)
    if not experiments.is_dir():
        raise InputError(f"--experiments {str(experiments)!r} is not a folder of spec files (run from the repository root)")
    paths = sorted(p for p in experiments.iterdir() if p.suffix in (".yaml", ".yml"))
    specs = [load_spec(p) for p in paths]  # validate all before running any
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise InputError(f"--only: unknown spec name(s) {unknown}; known: {sorted(s.name for s in specs)}")
        specs = [s for s in specs if s.name in only]
    if not specs:
        raise InputError(f"no spec files (*.yaml) in {str(experiments)!r}")
    names = {spec.name: outputs(spec.name, spec.plot) for spec in specs}
    written = []
    for spec in specs:
        t0 = time.perf_counter()
        run_dir = run_spec(spec, runs / spec.name, overwrite=True, progress=progress, jobs=jobs)
        figs = [draw(run_dir, entry, figures / name) for entry, name in names[spec.name]]
        print(f"{spec.name}: {len(spec.runs)} runs in {time.perf_counter() - t0:.1f}s -> "
              + ", ".join(str(f) for f in figs), file=sys.stderr)
        written += figs
    return written
