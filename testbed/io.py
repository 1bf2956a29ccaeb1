"""File input and output: atomic writes (temporary name, then rename), reproducible .npz, JSONL reading."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from testbed.errors import InputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename. The temporary file
    ``.<name>.<pid>.XXXXXXXX.tmp`` names its writer: a process killed mid-write (SIGKILL: no clean-up runs) leaves
    it, and a later process's first write into that folder removes those of writers that no longer run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; a written file gets the mode open() would give
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = path.parent.resolve()
    if folder not in _SWEPT:  # once per folder and process: a listing per write cost 17 ms in a 20 000-file folder
        _SWEPT.add(folder)
        for p in folder.iterdir():
            m = _TEMPORARY.fullmatch(p.name)
            if m and int(m.group(2)) != os.getpid() and not alive(int(m.group(2))):
                p.unlink(missing_ok=True)


_TEMPORARY = re.compile(r"\.(.+)\.(\d+)\.[A-Za-z0-9_]{8}\.tmp")
"""atomic_write's temporary file, .<name>.<pid>.<mkstemp's 8 characters>.tmp (a file named x.99999.json has the
temporary .x.99999.json.<pid>.XXXXXXXX.tmp: the pid is the group before the 8 characters, never the name's)."""
_SWEPT: set[Path] = set()


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (someone else's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def umask() -> int:
    """The process's umask (read by setting it and putting it back: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` by renames; an existing ``out`` is replaced only after
    the new folder is complete, so ``out`` is never half-written."""
    import shutil

    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, out)


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_npz(path: str | os.PathLike, arrays: dict) -> None:
    """Like ``np.savez`` but byte-for-byte reproducible (fixed zip timestamps), written atomically."""
    import io
    import zipfile

    import numpy as np

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            for name, value in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
                z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
    atomic_write(path, write)


def read_jsonl(path: str | os.PathLike, columns: tuple[str, ...], kind: type = str) -> list[dict]:
    """Rows of a JSONL file whose fields ``columns`` are all of type ``kind`` (str, or int for indices);
    a one-line InputError naming the file, line and field otherwise."""
    path = Path(path)
    where = f"dataset {str(path)!r}"
    if not path.is_file():
        raise InputError(f"{where} does not exist")
    rows = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: line {i} is not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{where}: line {i} is not JSON") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: line {i} must be a JSON object")
        missing = [c for c in columns if c not in row]
        if missing:
            raise InputError(f"{where}: line {i} is missing column(s) {missing}; expected {', '.join(columns)}")
        for c in columns:
            if isinstance(row[c], bool) or not isinstance(row[c], kind):
                what = {int: "an integer index", str: "a string", list: "a list (of token ids)"}.get(kind, kind.__name__)
                raise InputError(f"{where}: line {i}: {c} must be {what} (got {row[c]!r})")
        rows.append(row)
    if not rows:
        raise InputError(f"{where} is empty")
    return rows


def _yaml_loader():
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        """The spec reader: YAML 1.1 reads ``1e-3`` as a string, so the usual scientific notation is
        made a float; a mapping key given twice is an error (PyYAML keeps the last value silently)."""

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is None:
                    seen[key] = key_node.start_mark.line
                else:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1} "
                        f"(first at line {first + 1})", None)
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."),
    )
    return Loader


def read_yaml(path: str | os.PathLike, what: str = "spec"):
    """A YAML (or JSON) file, read strictly: scientific-notation floats, duplicate keys refused, and any
    error one line naming the file, the problem, its line and column."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {str(path)!r} does not exist")
    try:
        return yaml.load(path.read_text(), Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InputError(f"{what} {str(path)!r} is not valid YAML: {e.problem}{where}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{what} {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
