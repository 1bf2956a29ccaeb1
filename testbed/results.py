"""The run folder — one writer, one determinism rule, every track (bandit, preference, LM).

Every run folder holds ``config.yaml`` (the resolved spec), ``metrics.csv`` (one row per evaluated
iteration per run, the schema below), ``meta.json`` (provenance: versions, git commit, seeds, the
sha256 of each output) and ``timings.json`` (wall times, throughput and peak memory: everything that
is *measured* rather than computed). A track adds its own files (``policies.npz``, ``samples/``, …).

The determinism rule: the same spec and seed give byte-identical ``config.yaml``, ``metrics.csv`` and
``meta.json``; the measured columns (:data:`MEASURED`) are kept out of ``metrics.csv`` and stored per
row in ``timings.json``, from which :func:`read_metrics` merges them back. The folder is built under a
temporary name and renamed when complete (:class:`RunFolder`), so it is never half-written; an
unfinished run keeps its checkpoints in ``<out>.partial/`` (:func:`open_partial`) and ``--resume``
continues from there.

This module imports neither torch nor any algorithm: plotting reads run folders through it alone.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from testbed.errors import InputError
from testbed.io import alive, atomic_write_text, replace_dir, sha256
from testbed.run_table import runs_csv_text

try:
    import fcntl
except ImportError:  # not POSIX: no output-folder lock
    fcntl = None

COLUMNS = ("run_id", "problem", "algorithm", "seed", "iteration", "samples", "queries", "reward", "suboptimality",
           "kl_ref", "kl_reg_gap", "exploitability", "exploitability_avg", "loss", "wall_time",
           "policy/clipfrac", "policy/approx_kl", "policy/ratio_max", "loss/value")
"""The shared schema (DESIGN.md §4). ``samples``: responses drawn so far; ``queries``: reward or preference
oracle calls so far (both empty in exact/population mode); the last four are an algorithm's diagnostics
(PPO's clip fraction, k3 KL estimate, largest ratio and value loss), grouped like the LM track's names."""
EXTRAS = ("policy/clipfrac", "policy/approx_kl", "policy/ratio_max", "loss/value")
OLD_NAMES = {"clipfrac": "policy/clipfrac", "approx_kl": "policy/approx_kl", "ratio_max": "policy/ratio_max",
             "value_loss": "loss/value"}
"""Column names of run folders written before the grouping; :func:`read_metrics` reads them under the new names."""

LM_COLUMNS = COLUMNS + (
    "objective/scores", "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
    "val/num_eos_tokens", "loss/policy", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "eps", "tokens_per_s", "peak_memory_mb", "eval/scores", "lr", "eval/win_rate", "eval/win_rate_lo",
    "eval/win_rate_hi", "eval/kl", "eval/rm_score", "eval/oracle_score", "eval/ref_oracle_score", "eval/words")
"""The LM track's columns: the shared schema plus TRL's names (``objective/*``, DPO's ``rewards/*``) and the
TL;DR study's final evaluation (``eval/*``)."""

MEASURED = ("wall_time", "eps", "tokens_per_s", "peak_memory_mb")
"""Measured, not computed: stored in timings.json (per run, one value per row), never in metrics.csv."""

INTS = {"seed", "iteration", "samples", "queries"}
TEXT = {"run_id", "problem", "algorithm"}


def file_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    """The columns metrics.csv holds: all but the measured ones."""
    return tuple(c for c in columns if c not in MEASURED)


def format_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def csv_text(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Rows as CSV text with the given header (missing keys are empty cells; floats by ``repr``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([format_value(r.get(c)) for c in columns])
    return buf.getvalue()


def measured(rows: list[dict]) -> dict:
    """{column: {run_id: [value per row]}} of the measured columns present in ``rows``."""
    out: dict = {}
    for c in MEASURED:
        if any(r.get(c) is not None for r in rows):
            per: dict = {}
            for r in rows:
                per.setdefault(r["run_id"], []).append(r.get(c))
            out[c] = per
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python and the installed packages a run depends on (read from package metadata: no imports)."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "torch", "gymnasium", "rebel-testbed", *extra):
        try:
            out["testbed" if name == "rebel-testbed" else name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def prepare_out(out: Path, overwrite: bool, allowed: set[str]) -> None:
    """Refuse an existing ``--out`` unless ``overwrite``, and even then unless it is a run folder
    (it holds meta.json and nothing but ``allowed`` names, figures and tables)."""
    out = Path(out)
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"--out {str(out)!r}: {str(parent)!r} is a file, not a folder")
    if not out.exists():
        return
    if not overwrite:
        raise InputError(f"--out {str(out)!r} already exists; pass --overwrite to replace it")
    if not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder")
    names = {p.name for p in out.iterdir()}
    if "meta.json" not in names or not names <= allowed | {"runs.csv"} | {n for n in names if n.endswith((".png", ".md"))}:
        raise InputError(f"--out {str(out)!r} is not a run folder (it holds other files); --overwrite only replaces run folders")


def partial_dir(out: Path) -> Path:
    """Where an unfinished run keeps its checkpoints: <out>.partial next to <out>."""
    out = Path(out)
    return out.parent / f"{out.name}.partial"


def input_hashes(paths) -> dict[str, str]:
    """The sha256 of every input file (a folder: of its files' names and hashes), by resolved path, so that a
    resume can tell an edited dataset or instance file from the one the interrupted run read."""
    out = {}
    for p in sorted({str(Path(p).resolve()) for p in paths}):
        path = Path(p)
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(q for q in path.rglob("*") if q.is_file()):
                h.update(f"{f.relative_to(path).as_posix()}\0{sha256(f)}\n".encode())
            out[p] = h.hexdigest()
        elif path.is_file():
            out[p] = sha256(path)
    return out


IGNORED = ("source",)
"""Config fields a resume does not compare: where the spec was read from (an absolute path, another folder)."""


def content_key(obj) -> str:
    """A short hash of a JSON-able description of a run (its resolved settings and the hashes of its inputs):
    the name of its files in ``<out>.partial``, so that a resume finds a run's work by what it is."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_difference(old: str, new: str) -> str | None:
    """Why the resolved config ``new`` is not the one an interrupted run stored (``old``), in one phrase, or
    None when they agree on everything but :data:`IGNORED`."""
    import yaml

    a, b = yaml.safe_load(old) or {}, yaml.safe_load(new) or {}
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None if a == b else "the spec changed"
    ia, ib = a.pop("inputs", {}) or {}, b.pop("inputs", {}) or {}
    for path in sorted(set(ia) | set(ib)):
        if path not in ib:
            return f"input file {path!r} is no longer read"
        if path not in ia:
            return f"input file {path!r} is new"
        if ia[path] != ib[path]:
            return f"input file {path!r} changed (sha256 {ia[path][:12]}… then, {ib[path][:12]}… now)"
    for k in IGNORED:
        a.pop(k, None), b.pop(k, None)
    changed = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    return f"the spec changed (field {changed[0]!r})" if changed else None


def open_partial(out: Path, config_text: str, resume: bool, overwrite: bool, create: bool = True,
                 reuse: bool = False) -> Path:
    """The ``<out>.partial`` folder of a run whose resolved config is ``config_text``.

    ``resume``: it must exist and hold the same config up to :data:`IGNORED` and with the same input hashes
    (else a one-line error naming what changed), unless ``reuse`` (then the stored work of runs whose
    settings and inputs are unchanged is kept, found by :func:`content_key`, and the rest recomputed);
    otherwise an existing one is refused unless ``overwrite`` (then removed). With ``create`` it is made and
    the config stored in it."""
    partial = partial_dir(out)
    stored = partial / "config.yaml"
    if resume or reuse:
        if not stored.is_file():
            raise InputError(f"--resume: nothing to resume at {str(partial)!r}")
        why = None if reuse else config_difference(stored.read_text(), config_text)
        if why:
            raise InputError(f"--resume: {why} since the interrupted run in {str(partial)!r}; pass --reuse to keep "
                             "the finished work of the runs that did not change (the rest is recomputed), or "
                             "--overwrite to start over")
    elif partial.exists():
        if not overwrite:
            raise InputError(f"an interrupted run of --out {str(out)!r} is in {str(partial)!r}; pass --resume to "
                             "continue it or --overwrite to start over")
        shutil.rmtree(partial)
    if create:
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stored, config_text)
    return partial


def remove_stale(out: Path) -> list[Path]:
    """Remove what a killed run left beside ``out``: the ``.<out>.tmp-PID`` folder it was building and the
    ``.<out>.old-PID`` one it was replacing, when process PID no longer runs."""
    out = Path(out)
    removed = []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)")
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


@contextlib.contextmanager
def out_lock(out: Path):
    """Hold ``.<out>.lock`` beside ``out`` (an exclusive ``flock``) while a run writes ``out`` and its
    ``.partial``: a second run into the same folder is refused naming the PID that holds it. On entry, the
    leftovers of killed runs are removed (:func:`remove_stale`). Folders made for the lock and left empty are
    removed on exit."""
    out = Path(out)
    made = [p for p in [out.absolute().parent, *out.absolute().parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    fd = None
    try:
        while fcntl is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                fd = None
                raise InputError(f"--out {str(out)!r}: another run (PID {holder}) is writing it (it holds "
                                 f"{str(path)!r}); wait for it to finish or stop it") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its last holder removed after we opened it
                break
            os.close(fd)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        remove_stale(out)
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)
            os.close(fd)
        for d in made:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break


class RunFolder:
    """Build a run folder under a temporary name next to ``out``; :meth:`finish` writes the standard files
    and renames it into place. Use as a context manager: on an exception the temporary folder is removed
    and ``out`` is left as it was."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"
        self.started = datetime.now(UTC).isoformat()

    def __enter__(self) -> RunFolder:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_rows(self, rows: list[dict], columns: tuple[str, ...]) -> None:
        """``metrics.csv`` of the rows made so far, written atomically into the folder being built (each
        iteration, by the LM run): a run killed at hour 10 leaves hours 0-10 in ``.<out>.tmp-PID/metrics.csv``
        (the same bytes as the finished file's first rows) until the next run into ``out`` clears it."""
        atomic_write_text(self.tmp / "metrics.csv", csv_text(rows, file_columns(columns)))

    def finish(self, config_text: str, rows: list[dict], columns: tuple[str, ...], meta: dict,
               files: tuple[str, ...] = (), timings: dict | None = None) -> Path:
        """Write config.yaml, metrics.csv (``columns`` but the measured ones), meta.json (``meta`` plus the
        sha256 of config.yaml, metrics.csv and ``files``) and timings.json (the measured columns per row,
        start and finish times, and ``timings``); then move the folder to ``out``."""
        atomic_write_text(self.tmp / "config.yaml", config_text)
        atomic_write_text(self.tmp / "metrics.csv", csv_text(rows, file_columns(columns)))
        names = ["config.yaml", "metrics.csv", *files]
        runs_csv = runs_csv_text(config_text, LM_COLUMNS)  # the runs' hyper-parameters, keyed by run_id
        if runs_csv is not None:
            atomic_write_text(self.tmp / "runs.csv", runs_csv)
            names.insert(2, "runs.csv")
        meta = {**meta, "sha256": {n: sha256(self.tmp / n) for n in names},
                "note": "timings.json (wall times, throughput, memory) is the one output that differs between identical runs"}
        atomic_write_text(self.tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
        atomic_write_text(self.tmp / "timings.json", json.dumps(
            {"started": self.started, "finished": datetime.now(UTC).isoformat(), **(timings or {}), **measured(rows)},
            indent=1) + "\n")
        replace_dir(self.tmp, self.out)
        return self.out


REQUIRED = ("run_id", "seed", "iteration")
"""The columns without which metrics.csv's rows cannot be told apart: :func:`read_metrics` refuses a file that
lacks one."""


def _cell(path: Path, line: int, k: str, v: str):
    """One metrics.csv cell parsed (text columns as they are, empty cells None), or an InputError naming it."""
    if k in TEXT:
        return v
    if v == "":
        return None
    try:
        return int(v) if k in INTS else float(v)
    except ValueError:
        raise InputError(f"{path} line {line}, column {k!r}: {v!r} is not {'an integer' if k in INTS else 'a number'} "
                         "(expected a number, or an empty cell for none)") from None


def read_metrics(run_dir: str | Path, columns: tuple[str, ...] | None = None) -> list[dict]:
    """metrics.csv of any run folder as a list of dicts, numbers parsed (empty cells None), the measured
    columns merged back from timings.json, in schema order (``columns``: COLUMNS, or LM_COLUMNS when the
    file has LM columns). Old column names (``clipfrac``, …) are read under the new ones. A header without
    :data:`REQUIRED`, a row with more or fewer cells than the header, or a cell that is not a number (in a
    number column) is an InputError naming the file, the line and the column."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise InputError(f"{str(run_dir)!r} is not a run folder (no metrics.csv)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames = [OLD_NAMES.get(c, c) for c in reader.fieldnames or []]  # rows keyed by new names
        missing = [c for c in REQUIRED if c not in header]
        if not header:
            raise InputError(f"{path} is empty; expected a header row with the run-folder schema "
                             f"({', '.join(file_columns(COLUMNS))}), then one row per evaluated iteration")
        if missing:
            raise InputError(f"{path}: the header lacks column(s) {', '.join(missing)}; expected the run-folder "
                             f"schema ({', '.join(file_columns(COLUMNS))})")
        rows = []
        for raw in reader:
            extra, cells = raw.pop(None, []), sum(v is not None for v in raw.values())
            if extra or cells < len(raw):
                raise InputError(f"{path} line {reader.line_num}: {cells + len(extra)} cells where the header has "
                                 f"{len(header)} (expected one cell per column, empty for none)")
            rows.append({k: _cell(path, reader.line_num, k, v) for k, v in raw.items()})
    if columns is None:
        columns = LM_COLUMNS if any(c in header for c in LM_COLUMNS[len(COLUMNS):]) else COLUMNS
    timings = Path(run_dir) / "timings.json"
    stored = json.loads(timings.read_text()) if timings.is_file() else {}
    seen: dict[str, int] = {}
    for r in rows:  # rows of a run are in iteration order
        i = seen[r["run_id"]] = seen.get(r["run_id"], -1) + 1
        for c in MEASURED:
            if c in columns and r.get(c) is None:
                w = stored.get(c, {}).get(r["run_id"], [])
                r[c] = w[i] if i < len(w) else None
    return [{c: r.get(c) for c in columns} for r in rows]
