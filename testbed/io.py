"""File input and output: atomic writes (temporary name, then rename), reproducible .npz, JSONL reading."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from testbed.errors import InputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    for i, line in enumerate(path.read_text().splitlines(), 1):
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
                what = "an integer index" if kind is int else "a string"
                raise InputError(f"{where}: line {i}: {c} must be {what} (got {row[c]!r})")
        rows.append(row)
    if not rows:
        raise InputError(f"{where} is empty")
    return rows
