"""Repeated checkpoints of one growing state at a cost linear in what is new (the format:
:mod:`testbed.training.checkpoint`).

A run's state holds lists that only grow — its metric rows (records: dicts of plain values), its wall times
(plain values). :class:`Checkpointer` keeps, across the saves of one path, each such list it has written (at least
:data:`JOURNAL_MIN` long): when a save finds the same list object again, no shorter and holding the very objects it
held (an identity check), it appends only the new tail to the sidecar ``<path>.log`` as one JSON line
``{"list": key, "items": [...]}`` and the tree refers to the list as ``{"journal": key, "count": n, ...}``; only the
tail is type-checked and serialised. Anything else — a list replaced, shrunk, an element swapped, a tail holding a
non-finite float or a record stored elsewhere already — is written in the tree as :func:`save_state` writes it.
Records of a journalled list must not be changed in place after a save (a run's rows are not): the sidecar holds
them as they were.

Atomicity: each save first truncates the sidecar back to the length the checkpoint on disk commits (bytes that a
crash left past it), appends, and only then writes the ``.npz`` atomically, recording the new length: a crash at any
moment leaves the previous checkpoint or the new one, and loading reads the committed bytes only. When more than half
of the sidecar (and over :data:`COMPACT_MIN` bytes) is lines no list refers to any more (lists replaced), the next
save is written whole (format 1) and the sidecar removed after it, so the sidecar stays within about twice what the
state needs. :func:`remove_checkpoint` deletes a checkpoint with its sidecar.
"""

from __future__ import annotations

import json
import os
import zipfile
from operator import is_not
from pathlib import Path

import numpy as np

from testbed.training.checkpoint import FORMAT_JOURNAL, TREE, plain_kind, read_state, sidecar, write_tree

JOURNAL_MIN = 32  # shorter lists stay in the tree: re-writing them costs at most this much per save
COMPACT_MIN = 1 << 20  # dead sidecar bytes tolerated whatever the live size


class _List:
    """A list the sidecar holds: its key, kind, the elements written (the same objects) and their bytes there."""

    def __init__(self, obj: list, key: int, kind: str, items: list, size: int):
        self.obj, self.key, self.kind, self.items, self.size = obj, key, kind, items, size


class _Plan:
    """One save's use of the sidecar: the entries it writes, the lines it appends (see :class:`_Writer`'s hooks)."""

    def __init__(self, ck: Checkpointer):
        self.ck = ck
        self.first: dict[int, int] = {}  # key -> id of the list's first element in this save
        self.poisoned: set[int] = set()  # keys of lists a record of which was stored before the list
        self.lines: list[bytes] = []
        self.end = ck.committed
        self.kept: dict[int, tuple[_List, list, int]] = {}  # id(list) -> (its _List, the new tail, its line's bytes)
        self.new: list[_List] = []

    def restart(self) -> _Plan:
        return _Plan(self.ck)

    def ref(self, oid: int) -> int | None:
        hit = self.ck.index.get(oid)
        if hit is None:
            return None
        lst, i = hit
        if lst.key in self.first:
            return self.first[lst.key] + i
        self.poisoned.add(lst.key)  # stored here first: its list is written in the tree this time
        return None

    def entry(self, w, obj: list) -> dict | None:
        known = self.ck.lists.get(id(obj))
        if known is not None and (len(obj) < len(known.items) or any(map(is_not, obj, known.items))):
            known = None  # shrunk or changed: a new list
        if known is not None:
            self.kept[id(obj)] = (known, [], 0)  # still tracked, even if written in the tree this time
            if known.key in self.poisoned:
                return None
            tail, key, kind = obj[len(known.items):], known.key, known.kind
        elif len(obj) < JOURNAL_MIN:
            return None
        else:
            tail, key, kind = obj, self.end, None
        if tail:
            kind_now = plain_kind(tail, w.stored)
            if kind_now is None or kind is not None and kind_now != kind or kind_now == "records" and any(
                    id(r) in self.ck.index for r in tail):
                return None
            kind = kind_now
            try:
                items = json.dumps(tail, separators=(",", ":"), allow_nan=False)
            except ValueError:  # a NaN or inf: the tree writes it
                return None
            line = f'{{"list":{key},"items":{items}}}\n'.encode()
            self.lines.append(line)
            self.end += len(line)
            if known is None:
                self.new.append(_List(obj, key, kind, list(obj), len(line)))
            else:
                self.kept[id(obj)] = (known, tail, len(line))
        first = w.ids(len(obj))
        self.first[key] = first
        if kind == "records":
            w.register(tail, first + len(obj) - len(tail))
        return {"journal": key, "count": len(obj), "kind": kind, "first": first}

    def flush(self) -> int:
        """Truncate the sidecar to the committed length, append this save's lines; the new length."""
        path = sidecar(self.ck.path)
        if self.lines or (path.exists() and path.stat().st_size != self.ck.committed):
            with open(path, "ab") as f:
                f.truncate(self.ck.committed)
                f.write(b"".join(self.lines))
        return self.end

    def commit(self) -> None:
        """After the ``.npz`` is written: the sidecar as it now stands is what the journal builds on."""
        ck = self.ck
        for lst in ck.lists.values():
            if id(lst.obj) not in self.kept:
                for rec in lst.items if lst.kind == "records" else ():
                    ck.index.pop(id(rec), None)
        ck.lists = {}
        for lst, tail, size in self.kept.values():
            self.add(lst, len(lst.items), tail, size)
        for lst in self.new:
            self.add(lst, 0, lst.items, 0)
        ck.committed = self.end

    def add(self, lst: _List, start: int, tail: list, size: int) -> None:
        ck = self.ck
        ck.lists[id(lst.obj)] = lst
        if tail is not lst.items:
            lst.items.extend(tail)
        lst.size += size
        if lst.kind == "records":
            ck.index.update((id(rec), (lst, start + i)) for i, rec in enumerate(tail))


class Checkpointer:
    """Saves and loads of checkpoint ``path`` (with its sidecar ``<path>.log``); keep one per path across saves.

    ``load()`` reads the checkpoint and remembers the lists it read from the sidecar, so a resumed run's next save
    appends to them; ``save(obj)`` writes ``obj`` (module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.committed: int | None = None  # the sidecar length the checkpoint on disk commits (None: not read yet)
        self.lists: dict[int, _List] = {}  # id(list) -> what the sidecar holds of it
        self.index: dict[int, tuple[_List, int]] = {}  # id(record) -> (its list, its position)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self):
        obj, reader, length, sizes = read_state(self.path)
        self.lists, self.index, self.committed = {}, {}, length or 0
        for out, key, kind in reader.journalled:
            _Plan(self).add(_List(out, key, kind, [], sizes.get(key, 0)), 0, list(out), 0)
        return obj

    def save(self, obj) -> None:
        if self.committed is None:
            self.committed = self._committed()
        log = sidecar(self.path)
        if (log.stat().st_size if log.exists() else 0) < self.committed:
            self.lists, self.index, self.committed = {}, {}, 0  # the sidecar was removed: start it again
        live = sum(lst.size for lst in self.lists.values())
        if self.committed - live > max(live, COMPACT_MIN):
            write_tree(self.path, obj)  # whole, then an empty sidecar builds on it
            self.lists, self.index, self.committed = {}, {}, 0
            log.unlink(missing_ok=True)
            return
        plan = _Plan(self)
        write_tree(self.path, obj, plan)
        plan.commit()

    def _committed(self) -> int:
        """The committed sidecar length of the checkpoint on disk (0 without one, or for one that is not valid)."""
        try:
            with np.load(self.path, allow_pickle=False) as z:
                tree = json.loads(z[TREE].tobytes().decode())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return 0
        length = tree.get("journal") if isinstance(tree, dict) and tree.get("format") == FORMAT_JOURNAL else 0
        return length if type(length) is int and length >= 0 else 0


def resume(path: str | os.PathLike | None) -> tuple[Checkpointer | None, object]:
    """The saver of checkpoint ``path`` and the state it holds (None when it does not exist); (None, None) for no
    checkpoint."""
    if path is None:
        return None, None
    ck = Checkpointer(path)
    return ck, ck.load() if ck.exists() else None


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete checkpoint ``path`` and its sidecar (the ``.npz`` first: no checkpoint is left without its sidecar)."""
    Path(path).unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)
