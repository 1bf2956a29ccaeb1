"""The ``testbed`` command: run, list, plot, reproduce.

Bad input prints one line ``testbed: error: ...`` and exits 2; an internal error exits 1 with a
one-line message (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from testbed.errors import InputError
from testbed.training import NumericalError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        raise InputError(message)


PLOT_ALIASES = {"curves": "curve"}
"""Other names ``testbed plot --kind`` takes for a kind of :data:`testbed.plotting.draw.KINDS`."""


class _PlotKinds:
    """The choices of ``testbed plot --kind``: the kinds of :data:`testbed.plotting.draw.KINDS` and
    :data:`PLOT_ALIASES`, looked up when argparse needs them (so that other commands do not import matplotlib)."""

    def _names(self) -> list[str]:
        from testbed.plotting.draw import KINDS

        return [*KINDS, *PLOT_ALIASES]

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, value) -> bool:
        return value in self._names()


def _cmd_run(args) -> None:
    from testbed.experiments import load_spec, run_spec
    from testbed.experiments.backends import backend_session
    from testbed.experiments.runner import prepare_out

    prepare_out(Path(args.out), args.overwrite)  # refuse before any work
    spec = load_spec(args.spec, args.overrides)
    with backend_session(args.backend, args.jobs, args.ray_address), _logging(args):  # before any output
        out = run_spec(spec, args.out, overwrite=args.overwrite, progress=not args.quiet, jobs=args.jobs,
                       resume=args.resume, checkpoint_every=args.checkpoint_every, backend=args.backend,
                       batch=not args.no_batch, reuse=args.reuse)
    print(f"{len(spec.runs)} runs -> {out}")


def _logging(args):
    """--log tensorboard|wandb: rows logged live into --log-dir (default <out>.logs) by the one process."""
    from testbed.training.loggers import logging_to

    if args.log and (getattr(args, "jobs", 1) > 1 or getattr(args, "backend", "local") != "local"):
        raise InputError("--log needs --jobs 1 and the local backend (the rows are logged by the one process)")
    return logging_to(args.log, args.log_dir or f"{args.out}.logs")


def _add_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", choices=["tensorboard", "wandb"], help="also log every metric row live (offline)")
    parser.add_argument("--log-dir", help="where --log writes (default <out>.logs)")


def _cmd_list(args) -> None:
    from testbed.algorithms import ALGORITHMS, algorithm_table

    if args.markdown:
        print(algorithm_table(), end="")
        return
    from testbed.problems import ENV_IDS, FAMILIES, PREFERENCE_FAMILIES

    print("problems (spec `problems:` entries):")
    print(f"  kind: tabular   family: {' | '.join(FAMILIES)}   contexts, actions, seed, gap, noise_std")
    print(f"  kind: linear    family: {' | '.join(FAMILIES)}   contexts, actions, dim, seed, gap, misspecification, noise_std")
    print(f"  kind: preference family: {' | '.join(PREFERENCE_FAMILIES)}   contexts, actions, seed, eps, strength, raters, "
          "temperature, pi_ref")
    print("  file: PATH.npz  arrays rewards [X,Y] or features [X,Y,d] + theta_star [d] or preferences [X,Y,Y];"
          " optional rho, pi_ref, noise_std")
    print("gymnasium environments: " + ", ".join(ENV_IDS))
    print("algorithms (spec `algorithms:` entries; lists expand to a grid):")
    for name, cls in ALGORITHMS.items():
        doc = cls.__doc__ if "__doc__" in vars(cls) and cls.__doc__ else sys.modules[cls.__module__].__doc__
        print(f"  {name}: {doc.strip().splitlines()[0]}")
        for f in dataclasses.fields(cls.Config):
            print(f"      {f.name} = {f.default!r}: {f.metadata.get('doc', '')}")


def _cmd_plot(args) -> None:
    from testbed.plotting import draw, read_config
    from testbed.plotting.draw import MARKDOWN

    entries = read_config(Path(args.dir)).get("plot") or [{"kind": "curve"}]
    kind = PLOT_ALIASES.get(args.kind, args.kind) or entries[0].get("kind", "curve")
    entry = next((e for e in entries if e.get("kind") == kind), {"kind": kind})
    entry = {**entry, **{k: v for k, v in (("panel_by", args.panel_by), ("x", args.x), ("y", args.y)) if v}}
    from testbed.plotting.llm import is_lm_folder

    y_name = (args.y or ("reward" if is_lm_folder(args.dir) else "suboptimality")).replace("/", "_")
    out = args.out or str(Path(args.dir) / (f"{y_name}.png" if kind == "curve" else
                                           f"{kind}.md" if kind in MARKDOWN else f"{kind}.png"))
    print(draw(args.dir, entry, out))


def _cmd_check(args) -> int:
    from testbed.experiments.conformance import BUILTINS, format_table, load_rule, run_checks

    with contextlib.suppress(ImportError):  # the LM rows of the battery (the llm extra)
        import testbed.llm.conformance  # noqa: F401

    targets = [f"builtin:{n}" for n in BUILTINS] if args.target == "builtins" else [args.target]
    factories = [load_rule(t) for t in targets]  # every target is valid before any check runs
    ok = True
    for target, factory in zip(targets, factories):
        results = run_checks(factory, target)
        print(format_table(target, results))
        ok &= all(r.passed for r in results)
    return 0 if ok else 1


def _cmd_reproduce(args) -> int:
    from testbed.experiments.reproduce import reproduce
    from testbed.llm.study import reproduce_llm

    if args.quick and not (args.llm or args.diffusion):
        raise InputError("--quick goes with --llm or --diffusion (the quick variant of the LM or image study)")
    if args.diffusion:
        if args.llm or args.check or args.update_golden or args.fast or args.only:
            raise InputError("--diffusion runs the image study only; it takes no --llm, --check, --update-golden, "
                             "--fast or --only")
        from testbed.diffusion.study import reproduce_diffusion
        for fig in reproduce_diffusion(args.experiments, args.figures, args.runs, quick=args.quick,
                                       progress=not args.quiet):
            print(fig)
        return 0
    if args.llm:
        if args.check or args.update_golden or args.fast or args.only:
            raise InputError("--llm runs the LM study only; it takes no --check, --update-golden, --fast or --only")
        for fig in reproduce_llm(args.experiments, args.figures, args.runs, quick=args.quick, progress=not args.quiet):
            print(fig)
        return 0

    result = reproduce(args.experiments, args.figures, args.runs, args.only, progress=not args.quiet,
                       jobs=args.jobs, check=args.check, update_golden=args.update_golden, fast=args.fast,
                       backend=args.backend, ray_address=args.ray_address)
    if isinstance(result, bool):
        return 0 if result else 1
    for fig in result:
        print(fig)


def _cmd_llm_run(args) -> None:
    try:
        from testbed.llm.spec import load_lm_spec
    except ImportError as e:  # the llm extra is missing
        raise InputError(f"the LM track needs the llm extra (pip install -e '.[llm]'): {e}") from None
    spec = load_lm_spec(args.spec, overrides=args.overrides)
    if args.dry_run:
        from testbed.llm.plan import plan_text
        print(plan_text(spec))
        return
    if not args.out:
        raise InputError("--out is required (or pass --dry-run)")
    from testbed.llm.train import prepare_lm_out, run_lm_spec
    prepare_lm_out(Path(args.out), args.overwrite)
    with _logging(args):
        out = run_lm_spec(spec, args.out, overwrite=args.overwrite, progress=not args.quiet, resume=args.resume,
                          checkpoint_every=args.checkpoint_every or 0, reuse=args.reuse)
    if out is not None:
        print(f"{len(spec.algorithms) * len(spec.seeds)} runs -> {out}")


def _cmd_diffusion_run(args) -> None:
    try:
        import diffusers  # noqa: F401

        from testbed.diffusion.spec import load_diffusion_spec
    except ImportError as e:  # the diffusion extra is missing
        raise InputError(f"the image track needs the diffusion extra (pip install -e '.[diffusion]'): {e}") from None
    if not args.dry_run and not args.out:
        raise InputError("--out is required (or pass --dry-run)")
    if args.out:
        from testbed.diffusion.train import RUN_FILES
        from testbed.results import prepare_out
        prepare_out(Path(args.out), args.overwrite, RUN_FILES)  # refuse before any work
    spec = load_diffusion_spec(args.spec, args.overrides)
    if args.dry_run:
        from testbed.diffusion.plan import plan_text
        print(plan_text(spec))
        return
    from testbed.diffusion.train import run_diffusion_spec
    with _logging(args):
        out = run_diffusion_spec(spec, args.out, overwrite=args.overwrite, progress=not args.quiet,
                                 resume=args.resume, checkpoint_every=args.checkpoint_every or 0,
                                 reuse=args.reuse)
    print(f"{len(spec.algorithms) * len(spec.seeds)} runs -> {out}")


def _cmd_llm_pipeline(args) -> None:
    try:
        from testbed.llm.pipeline import plan_pipeline_text
        from testbed.llm.pipeline_run import run_pipeline
    except ImportError as e:  # the llm extra is missing
        raise InputError(f"the LM track needs the llm extra (pip install -e '.[llm]'): {e}") from None
    print(plan_pipeline_text(args.dir) if args.dry_run else f"pipeline -> {run_pipeline(args.dir, not args.quiet)}")


def _jobs(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {value!r})")
    return int(value)


def _ray_address(value: str) -> str:
    from testbed.experiments.backends import check_ray_address

    try:
        return check_ray_address(value, "")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None


def _add_run_folder_options(parser: argparse.ArgumentParser) -> None:
    """--overwrite, --quiet, --resume, --reuse, --checkpoint-every: the run-folder options of the LM and image runs."""
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>.partial")
    parser.add_argument("--reuse", action="store_true", help="like --resume for a changed spec: keep the finished "
                        "runs whose settings and input files did not change, recompute the rest")
    parser.add_argument("--checkpoint-every", type=_jobs, default=None, metavar="K",
                        help="checkpoint every K iterations into <out>.partial (LM runs: on any number of processes)")


def _add_backend(parser: argparse.ArgumentParser, jobs: str) -> None:
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help=f"local: {jobs}; ray: one Ray task per grid point (pip install \"rebel-testbed[ray]\"), "
                             "results identical")
    parser.add_argument("--ray-address", type=_ray_address, metavar="HOST:PORT",
                        help="with --backend ray: join this Ray cluster (default: $RAY_ADDRESS, else a local Ray "
                             "instance of --jobs CPUs)")


def _add_overrides(parser, example: str) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"override spec fields, e.g. {example} (validated like the spec)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="testbed", description="REBEL / NPG testbed on contextual bandits with exact ground truth")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a spec file into a run folder")
    r.add_argument("spec")
    _add_overrides(r, "iterations=50 algorithms.0.eta=0.5")
    r.add_argument("--out", required=True, help="run folder to create")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--jobs", type=_jobs, default=1, help="grid points run in this many processes (same results)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from <out>.partial")
    r.add_argument("--reuse", action="store_true", help="like --resume for a changed spec: keep the finished work of "
                   "the runs whose settings and input files did not change, recompute the rest")
    r.add_argument("--checkpoint-every", type=_jobs, default=50, metavar="K",
                   help="checkpoint each unfinished run every K iterations (default 50)")
    r.add_argument("--no-batch", action="store_true",
                   help="run seeds one by one instead of as stacked arrays (same results; for timing)")
    _add_backend(r, "serial, or --jobs processes")
    _add_log(r)
    r.set_defaults(func=_cmd_run)
    ls = sub.add_parser("list", help="list problems and algorithms")
    ls.add_argument("--markdown", action="store_true", help="the algorithm table of the README, from the registry")
    ls.set_defaults(func=_cmd_list)
    pl = sub.add_parser("plot", help="draw a run folder's metric vs iteration")
    pl.add_argument("dir")
    pl.add_argument("--out", help="output path (default DIR/<y>.png, DIR/<kind>.png, or DIR/<kind>.md for a table)")
    pl.add_argument("--kind", choices=_PlotKinds(), metavar="KIND", help="a kind of testbed.plotting.draw.KINDS, e.g. "
                    "curve, table, aggregate (a wrong one lists them all); default: the spec's first plot entry")
    pl.add_argument("--panel-by", help="hyper-parameter that splits panels, e.g. eta")
    pl.add_argument("--x", help="iteration | samples")
    pl.add_argument("--y", help="suboptimality | reward | kl_ref | kl_reg_gap | loss | exploitability | exploitability_avg")
    pl.set_defaults(func=_cmd_plot)
    ck = sub.add_parser("check", help="run the conformance battery of testbed/THEORY.md on an update rule")
    ck.add_argument("target", help="MODULE:OBJECT, path/to/file.py:OBJECT, builtin:NAME, or 'builtins' for all of ours")
    ck.set_defaults(func=_cmd_check)
    rp = sub.add_parser("reproduce", help="run every spec in experiments/ and write figures/*.png")
    rp.add_argument("--experiments", default="experiments")
    rp.add_argument("--figures", default="figures")
    rp.add_argument("--runs", default="runs", help="where the run folders go")
    rp.add_argument("--only", nargs="+", help="spec names to run")
    rp.add_argument("--quiet", action="store_true")
    mode = rp.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with experiments/golden/ (exit 1 if a value moved)")
    mode.add_argument("--update-golden", action="store_true", help="rewrite experiments/golden/<spec>.csv")
    rp.add_argument("--fast", action="store_true", help="only the fast subset listed in experiments/golden/tolerances.yaml")
    rp.add_argument("--llm", action="store_true", help="run the LM study (experiments/llm/tldr_smollm2.yaml; needs the "
                    "smollm extra) and write figures/llm_reward_kl.png, llm_winrate.png, llm-table.md")
    rp.add_argument("--diffusion", action="store_true", help="run the image study (experiments/diffusion/"
                    "digits_compress.yaml; needs the diffusion extra) and write figures/diffusion_reward.png, "
                    "diffusion_samples.png, diffusion-table.md")
    rp.add_argument("--quick", action="store_true", help="with --llm or --diffusion: the quick variant (minutes; files "
                    "end in -quick)")
    rp.add_argument("--jobs", type=_jobs, default=os.cpu_count() or 1,
                    help="processes per spec (default: one per core; results do not depend on it)")
    _add_backend(rp, "--jobs processes")
    rp.set_defaults(func=_cmd_reproduce)
    lm = sub.add_parser("llm", help="the language-model track")
    lsub = lm.add_subparsers(dest="llm_command", required=True, parser_class=_Parser)
    lr = lsub.add_parser("run", help="run an LM spec (under torchrun for data parallelism)")
    lr.add_argument("spec")
    _add_overrides(lr, "train.iterations=50 algorithms.0.eta=2")
    lr.add_argument("--out", help="run folder to create")
    lr.add_argument("--dry-run", action="store_true", help="validate offline and print the plan; no download, no training")
    _add_run_folder_options(lr)
    _add_log(lr)
    lr.set_defaults(func=_cmd_llm_run)
    lp = lsub.add_parser("pipeline", help="a folder of chained LM stages (pipeline.yaml: SFT -> RM -> RL -> eval)")
    lp.add_argument("dir")
    lp.add_argument("--dry-run", action="store_true", help="validate the chain offline and print each stage's models and memory")
    lp.add_argument("--quiet", action="store_true", help="no progress bar")
    lp.set_defaults(func=_cmd_llm_pipeline)
    df = sub.add_parser("diffusion", help="the image-generation track (a diffusion policy)")
    dsub = df.add_subparsers(dest="diffusion_command", required=True, parser_class=_Parser)
    dr = dsub.add_parser("run", help="run a diffusion spec")
    dr.add_argument("spec")
    _add_overrides(dr, "train.iterations=8 sampler.steps=10")
    dr.add_argument("--out", help="run folder to create")
    dr.add_argument("--dry-run", action="store_true", help="validate offline and print the plan (models held, "
                    "parameter counts, memory estimate); no download, no training")
    _add_run_folder_options(dr)
    _add_log(dr)
    dr.set_defaults(func=_cmd_diffusion_run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = False  # usage errors never show a traceback; --debug counts once the command line parses
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra  # key=value overrides after the options
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        debug = args.debug
        return args.func(args) or 0
    except InputError as e:
        if debug:
            raise
        print(f"testbed: error: {e}", file=sys.stderr)
        return 2
    except (NumericalError, FloatingPointError) as e:
        if debug:
            raise
        print(f"testbed: numerical error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: one line unless --debug
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"testbed: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
