"""``testbed llm pipeline DIR``: run a pipeline's stages in order, each reading the folders the earlier ones wrote.

Stage S writes the run folder ``<out>/S/`` (built under a temporary name, renamed when complete, by process 0):

- ``sft`` / ``reward_model`` (:mod:`testbed.llm.sft`, :mod:`testbed.llm.rm`): ``checkpoints/<kind>-0-s<seed>/`` (the
  model and tokenizer, ``save_pretrained``), ``metrics.csv`` (one row per update: loss, lr; the RM's
  ``rewards/*``), ``meta.json`` (with the held-out cross-entropy / pairwise accuracy before and after training);
- ``lm``: the stage's LM spec through :func:`testbed.llm.train.run_lm_spec` (the ``llm run`` code path);
- ``eval`` (:mod:`testbed.llm.pipeline_eval`): one metric row per policy and ``samples/<policy>.jsonl`` (every
  evaluated row: tokens, scores, KL, the judge's verdict).

A stage whose folder is complete (``meta.json`` present) is not run again, so an interrupted pipeline continues
at the first unfinished stage (an ``lm`` stage with ``checkpoint_every: K`` in ``pipeline.yaml`` continues from its
last checkpoint). A complete folder whose ``config.yaml`` differs from what ``pipeline.yaml`` now says for that
stage (an edited lr, seed, eta, ...) is refused, naming the first differing field: delete the folder to rerun the
stage (and the stages reading it). So is a complete folder made from another run of a stage it reads: ``<out>/made_from.json``
records, for each finished stage, the digest of each upstream stage's results when it ran (the sha256 of its
config.yaml, metrics.csv and runs.csv, which its meta.json lists), and a finished stage whose upstream folder is gone
(it will run again) or was rerun since with other results is refused before anything runs (an identical rerun, on
another commit, package version or device, is the same content; the model weights are not hashed, and a stage
finished before the ledger existed is checked for a deleted upstream only). A stage whose
upstream model folder is missing (that stage saved none) is refused before it starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import yaml

from testbed import results
from testbed.errors import InputError
from testbed.experiments.spec import dump_yaml
from testbed.io import atomic_write_text
from testbed.llm.pipeline import load_pipeline, stage_model_path, stage_reads, stage_run_id


def _config(st: dict) -> dict:
    drop = {"lm_spec", "raw_spec"}
    return {k: v for k, v in copy.deepcopy({k: v for k, v in st.items() if k not in drop}).items() if v is not None}


def _config_text(st: dict) -> str:
    """What a stage's run folder saves as config.yaml (an lm stage: its resolved spec, but the process count and
    the input hashes)."""
    if st["kind"] == "lm":
        from testbed.llm.train import resolved_spec
        return dump_yaml(resolved_spec(st["lm_spec"]))
    return dump_yaml(_config(st))


def _first_difference(saved, now, where: str = "") -> str | None:
    """The first field (``a.b[2]``) where two loaded configs differ, None when they are equal."""
    if isinstance(saved, dict) and isinstance(now, dict):
        for k in list(saved) + [k for k in now if k not in saved]:
            d = _first_difference(saved.get(k), now.get(k), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        return next((d for i, (a, b) in enumerate(zip(saved, now)) if (d := _first_difference(a, b, f"{where}[{i}]"))), None)
    return None if saved == now else f"{where or 'config'} (saved {saved!r}, now {now!r})"


def _check_finished(name: str, st: dict, dest: Path) -> None:
    """A complete stage folder is reused only if it was made from what pipeline.yaml says now."""
    try:
        saved = yaml.safe_load((dest / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if isinstance(saved, dict) and st["kind"] == "lm":
        for k in ("inputs", "processes"):  # input-file hashes: checked by the run itself on a resume
            saved.pop(k, None)
    diff = _first_difference(saved, yaml.safe_load(_config_text(st)))
    if diff:
        raise InputError(f"stage {name}: the finished {dest} was run with another config, {diff}; "
                         f"delete that folder to rerun the stage (and the stages that read it)")


MADE_FROM = "made_from.json"
"""In a pipeline's output folder: {stage: {upstream stage it reads: the digest of that stage's results when it ran}}."""


def _results_digest(folder: Path) -> str:
    """sha256 of the ``sha256`` map a stage's meta.json holds (its config.yaml, metrics.csv, runs.csv): what it
    computed, not where or with which versions (git commit, package versions, device)."""
    meta = json.loads((folder / "meta.json").read_text())
    return hashlib.sha256(json.dumps(meta.get("sha256"), sort_keys=True).encode()).hexdigest()


def _made_from(out: Path) -> dict:
    try:
        ledger = json.loads((out / MADE_FROM).read_text())
    except (OSError, ValueError):
        return {}
    return ledger if isinstance(ledger, dict) else {}


def _record_made_from(out: Path, name: str, st: dict) -> None:
    """Stage ``name`` has finished: note which run of each stage it read (the digest of that stage's meta.json)."""
    ledger = _made_from(out)
    ledger[name] = {src: _results_digest(out / src) for src in stage_reads(st)}
    atomic_write_text(out / MADE_FROM, json.dumps(ledger, indent=1, sort_keys=True) + "\n")


def _check_made_from(name: str, st: dict, out: Path, ledger: dict) -> None:
    """A finished stage is reused only if every stage it reads is finished and is the run it was made from."""
    for src in stage_reads(st):
        if not (out / src / "meta.json").is_file():
            raise InputError(f"stage {name}: the finished {out / name} reads stage {src}, which is not finished (it will "
                             f"run again); delete {out / name} to rerun it from the new {src}")
        made = ledger.get(name, {}).get(src) if isinstance(ledger.get(name), dict) else None
        if made is not None and made != _results_digest(out / src):
            raise InputError(f"stage {name}: the finished {out / name} was made from an earlier run of stage {src} "
                             f"({out / src} has been rerun since); delete {out / name} to rerun it")


def _check_upstream(name: str, st: dict, paths: dict) -> None:
    for src in stage_reads(st):
        if not (Path(paths[src]) / "config.json").is_file():
            raise InputError(f"stage {name}: reads stage {src}'s model {paths[src]}, which does not exist "
                             f"(stage {src} saved no model there; an lm stage saves with train.save: true)")


def run_pipeline(folder: str | Path, progress: bool = True) -> Path:
    """Run every unfinished stage of ``folder``'s pipeline; returns the pipeline's output folder."""
    folder = Path(folder)
    pl = load_pipeline(folder)
    every = pl["checkpoint_every"]
    stages, out = pl["stages"], pl["out"]
    paths = {n: stage_model_path(out, st) for n, st in stages.items() if st["kind"] != "eval"}
    ledger = _made_from(out)
    for name, st in stages.items():  # before any stage runs: a finished one made from another config, or from
        if (out / name / "meta.json").is_file():  # another run of a stage it reads, is refused
            _check_finished(name, st, out / name)
            _check_made_from(name, st, out, ledger)
    for name, st in stages.items():
        dest = out / name
        if (dest / "meta.json").is_file():
            print(f"stage {name}: done ({dest})", file=sys.stderr)
            continue
        _check_upstream(name, st, paths)
        t0 = time.perf_counter()
        print(f"stage {name} ({st['kind']}) -> {dest}", file=sys.stderr, flush=True)
        if st["kind"] == "lm":
            from testbed.llm.train import run_lm_spec
            partial = results.partial_dir(dest).is_dir()
            run_lm_spec(st["lm_spec"], dest, progress=progress, resume=partial, checkpoint_every=every)
            if _is_main():
                _record_made_from(out, name, st)
            _barrier()
            continue
        if st["kind"] == "eval":
            from testbed.llm.pipeline_eval import run_eval
            rows, records = run_eval(st, stages, paths, folder)
            model = tok = state_dict = None
            summary = {"policies": st["policies"]}
        else:
            from testbed.llm.rm import run_reward_model
            from testbed.llm.sft import run_sft
            rows, summary, model, tok, state_dict = (run_sft if st["kind"] == "sft" else run_reward_model)(st, folder)
            records = {}
        if _is_main():
            _write_stage(dest, st, rows, summary, model, tok, state_dict, records, time.perf_counter() - t0)
            _record_made_from(out, name, st)
        _barrier()
    return out


def _is_main() -> bool:
    from accelerate.state import PartialState
    return PartialState().is_main_process


def _barrier() -> None:
    from accelerate.state import PartialState
    PartialState().wait_for_everyone()


def _write_stage(dest: Path, st: dict, rows, summary: dict, model, tok, state_dict, records: dict, seconds: float) -> None:
    from testbed.llm.data import write_jsonl
    from testbed.llm.train import prepare_lm_out
    from testbed.results import LM_COLUMNS

    prepare_lm_out(dest, overwrite=False)
    with results.RunFolder(dest) as f:
        if model is not None:
            ck = f.tmp / "checkpoints" / stage_run_id(st)
            model.save_pretrained(ck, state_dict=state_dict)
            tok.save_pretrained(ck)
        for name, recs in records.items():
            write_jsonl(f.tmp / "samples" / f"{name}.jsonl", recs)
        meta = {"stage": st["name"], "kind": st["kind"], "summary": summary, "git_commit": results.git_commit(),
                "versions": results.versions(("transformers", "peft", "accelerate"))}
        f.finish(_config_text(st), rows, LM_COLUMNS, meta, timings={"seconds": seconds})
