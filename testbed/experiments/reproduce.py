"""``testbed reproduce``: run every spec in experiments/ and draw its figures into figures/; with
``--check`` compare each study with its golden summary in experiments/golden/ instead, and with
``--update-golden`` rewrite those summaries. A spec with a ``tune:`` block runs through
:mod:`testbed.experiments.tuning` (tune, then report on fresh seeds). After every spec it writes
figures/claims.md, the paper's claims checked (:mod:`testbed.experiments.claims`), when all the specs
ran (not with ``--only``). ``--llm`` runs the LM study instead (experiments/llm/
tldr_smollm2.yaml, or its ``--quick`` variant) and draws figures/llm_reward_kl.png, llm_winrate.png
and llm-table.md (``-quick`` before the extension for the quick variant)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testbed.errors import InputError
from testbed.experiments import golden
from testbed.experiments.backends import backend_session
from testbed.experiments.claims import write_claims
from testbed.experiments.runner import run_spec
from testbed.experiments.spec import load_spec
from testbed.experiments.tuning import run_tuned
from testbed.plotting import draw
from testbed.plotting.draw import MARKDOWN


def outputs(spec_name: str, plots: list[dict]) -> list[tuple[dict, str]]:
    """File name of each plot entry: its ``name``, else <spec>.png for the first and <spec>-<kind> after."""
    names = []
    for i, entry in enumerate(plots):
        ext = ".md" if entry.get("kind") in MARKDOWN else ".png"
        stem = entry.get("name") or (spec_name if i == 0 else f"{spec_name}-{entry.get('kind', 'curve')}")
        names.append((entry, stem + ext))
    if len({n for _, n in names}) != len(names):
        raise InputError(f"spec {spec_name!r}: two plot entries write the same file; give them a 'name'")
    return names


def reproduce(experiments: str | Path = "experiments", figures: str | Path = "figures",
              runs: str | Path = "runs", only: list[str] | None = None, progress: bool = True,
              jobs: int = 1, check: bool = False, update_golden: bool = False, fast: bool = False,
              backend: str = "local", ray_address: str | None = None) -> list[Path] | bool:
    """Run the specs. Default: draw the figures and return their paths. ``check``: compare with the
    golden summaries, print a diff of what moved, return True if nothing did. ``update_golden``: write
    the summaries. ``fast``: only the specs listed under ``fast`` in experiments/golden/tolerances.yaml.
    ``backend``/``ray_address``: where the grid points run (``testbed.experiments.backends``; one Ray
    session serves every spec)."""
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
    with backend_session(backend, jobs, ray_address):
        if check or update_golden:
            return _golden(specs, experiments / "golden", runs, progress, jobs, check, fast, backend)
        written = _figures(specs, figures, runs, progress, jobs, backend)
    if not only:
        written.append(write_claims(runs, figures / "claims.md"))
        print(f"claims: -> {written[-1]}", file=sys.stderr)
    return written


def _figures(specs, figures: Path, runs: Path, progress: bool, jobs: int, backend: str) -> list[Path]:
    """Run the specs and draw their figures. In parallel (``jobs`` > 1 or Ray) every spec submits its
    tasks to the session's one pool at once, so the next spec's runs fill the cores while the last runs
    of a spec finish; figures are drawn here, in order, as each spec completes (results are the same
    bytes either way: each run depends only on its own seed)."""
    names = {spec.name: outputs(spec.name, spec.plot) for spec in specs}
    t0 = time.perf_counter()

    def run(spec):
        runner = run_tuned if spec.tune else run_spec
        return runner(spec, runs / spec.name, overwrite=True, progress=progress and not overlap, jobs=jobs,
                      backend=backend)

    overlap = (jobs > 1 or backend == "ray") and len(specs) > 1
    with ThreadPoolExecutor(max_workers=len(specs) if overlap else 1) as pool:
        futures = [pool.submit(run, spec) for spec in specs]
        written = []
        for spec, fut in zip(specs, futures):
            run_dir = fut.result()
            figs = [draw(run_dir, entry, figures / name) for entry, name in names[spec.name]]
            print(f"{spec.name}: {len(spec.runs)} runs done at {time.perf_counter() - t0:.1f}s -> "
                  + ", ".join(str(f) for f in figs), file=sys.stderr)
            written += figs
    return written


def _golden(specs, golden_dir: Path, runs: Path, progress: bool, jobs: int, check: bool, fast: bool,
            backend: str = "local") -> bool:
    settings = golden.load_settings(golden_dir) if (check or fast) else {}
    if fast:
        specs = [s for s in specs if s.name in set(settings.get("fast", []))]
        if not specs:
            raise InputError(f"no spec of the fast subset {settings.get('fast')} is selected")
    ok, compared = True, 0
    for spec in specs:
        if spec.tune:  # the pick can flip between near-tied grid points on another machine: no golden rows
            print(f"{spec.name}: tuned spec, not golden-checked (its plain specs are)", file=sys.stderr)
            continue
        path = golden_dir / f"{spec.name}.csv"
        if check and not path.is_file():
            raise InputError(f"no golden summary {str(path)!r} for spec {spec.name!r} (run --update-golden)")
        t0 = time.perf_counter()
        now = golden.summarise(run_spec(spec, runs / spec.name, overwrite=True, progress=progress, jobs=jobs,
                                        backend=backend))
        if not check:
            golden.write(now, path)
            print(f"{spec.name}: wrote {len(now)} summary rows to {path}", file=sys.stderr)
            continue
        diffs = golden.compare(golden.read(path), now, settings["columns"], golden.chaotic_algorithms(settings, spec.name),
                               float((settings.get("chaotic") or {}).get("confidence", 0.999)),
                               golden.drifting_algorithms(settings, spec.name))
        compared += len(now)
        if diffs:
            ok = False
            print(golden.format_diffs(spec.name, diffs))
        else:
            print(f"{spec.name}: matches its golden summary ({len(now)} rows, {time.perf_counter() - t0:.1f}s)")
    if check:
        print(f"golden check: {len(specs)} spec(s), {compared} rows: {'OK' if ok else 'FAILED'}")
    return ok
