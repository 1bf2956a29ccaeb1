"""Checkpoints that hold data only: loading one executes nothing.

A run's state (its policy, algorithm, optimiser moments, random generators, rows so far) is written
as an ``.npz`` holding numeric arrays and one JSON document that describes the structure — no pickle
anywhere (``np.load(..., allow_pickle=False)``). The JSON names, for each object, the class it was:

- plain data: None, bool, int, float (NaN/inf included), str, list, tuple, dict (any such keys),
  ``collections.OrderedDict``; a list of None, bool, int, str and finite floats, or of *records* (dicts with
  str keys and such values: a run's metric rows), is stored as JSON as it stands, each record keeping its
  own id, so writing a run's rows costs one ``json.dumps`` rather than a walk of every value (exactly these
  types: a subclass such as ``numpy.float64``, or a NaN, sends the list through the general walk);
- numpy arrays of numeric, boolean or fixed-width string dtype (no object arrays) and numpy scalars;
  torch tensors (dense; dtypes numpy lacks, such as bfloat16, as their raw bits);
- ``numpy.random.Generator`` (its bit generator's JSON state and its ``SeedSequence``);
- instances of classes defined in the ``testbed`` package, as their attribute dict.

Loading rebuilds exactly that: the class named by an object entry must live in a ``testbed.`` module
(any other name is refused with a one-line error before anything is built), is created with
``cls.__new__`` and given its attributes — no constructor, ``__reduce__`` or other code of the file's
choosing runs. Shared references are kept (an object seen twice is stored once), so a resumed run
holds the same aliasing as one that never stopped.

:class:`testbed.training.journal.Checkpointer` saves the same path repeatedly at a cost linear in what is new: a
long list of records or values (a run's rows, its wall times) goes to the *sidecar* ``<path>.log``, one JSON line
``{"list": key, "items": [...]}`` per save holding only the elements appended since the last save (``key``: the
byte offset of that list's first line). Such a checkpoint's tree has format ``testbed-checkpoint/2`` and
``"journal": L``, the sidecar's committed length: :func:`load_state` reads the sidecar's first ``L`` bytes only and
builds each journalled list (``{"journal": key, "count": n, "kind": "records"|"values", "first": id}``) from its
lines, so bytes a crash left past ``L`` are never read, and the ``.npz`` (written atomically) stays the one commit
point.
"""

from __future__ import annotations

import importlib
import json
import os
import zipfile
from collections import OrderedDict
from itertools import chain
from pathlib import Path

import numpy as np

from testbed.errors import InputError
from testbed.io import save_npz

TREE = "__tree__"
_RECORD_VALUES = {type(None), bool, int, str, float}  # exactly these types (no subclasses): JSON keeps them
FORMAT = "testbed-checkpoint/1"
FORMAT_JOURNAL = "testbed-checkpoint/2"  # a tree that refers to its sidecar (``"journal"``: its committed length)


class CheckpointError(InputError):
    """A checkpoint that is not a data-only testbed checkpoint (or names a class outside testbed)."""


def _torch():
    import torch

    return torch


def _is_tensor(obj) -> bool:
    return type(obj).__module__.startswith("torch") and type(obj).__name__ in ("Tensor", "Parameter")


def sidecar(path: str | os.PathLike) -> Path:
    """The sidecar journal of checkpoint ``path``: ``<path>.log``."""
    path = Path(path)
    return path.with_name(path.name + ".log")


def plain_kind(items: list, stored) -> str | None:
    """"values" when every item is None, bool, int, str or float (exactly these types), "records" when every item is
    a dict of str keys and such values, none of them ``stored`` already (a predicate on ids), else None. Non-finite
    floats pass: JSON with ``allow_nan=False`` refuses them when written."""
    kinds = set(map(type, items))
    if kinds <= _RECORD_VALUES:
        return "values"
    if kinds != {dict} or any(map(stored, map(id, items))):
        return None
    if set(map(type, chain.from_iterable(items))) != {str}:  # the keys
        return None
    if not set(map(type, chain.from_iterable(rec.values() for rec in items))) <= _RECORD_VALUES:
        return None
    return "records"


class _Writer:
    """Walks a state into a JSON tree and a dict of arrays. ``journal``: a save plan of
    :class:`testbed.training.journal.Checkpointer` (``entry(writer, list)``: the tree entry of a list it journals,
    or None; ``ref(obj_id)``: the id of a record of a list it journals in this save, or None)."""

    def __init__(self, records: bool = True, journal=None):
        self.use_records = records
        self.journal = journal
        self.arrays: dict[str, np.ndarray] = {}
        self.seen: dict[int, int] = {}
        self.next = 0  # the next object id (records of a journalled list take a range of them)
        self.keep: list = []  # keeps memoised objects alive, so ids stay unique while writing

    def array(self, a: np.ndarray) -> str:
        if a.dtype.hasobject:
            raise CheckpointError("checkpoint: object arrays cannot be stored as data")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (keeps 0-d arrays 0-d)
        return name

    def ids(self, n: int) -> int:
        first, self.next = self.next, self.next + n
        return first

    def node(self, obj):
        if obj is None or type(obj) in (bool, int, str):
            return obj
        if type(obj) is float:  # (numpy scalars, float subclasses included, keep their type below)
            return obj if np.isfinite(obj) else {"float": repr(obj)}
        key = id(obj)
        if key in self.seen:
            return {"ref": self.seen[key]}
        if self.journal is not None and (ref := self.journal.ref(key)) is not None:
            return {"ref": ref}
        ref = self.ids(1)
        self.seen[key] = ref
        self.keep.append(obj)
        return {"id": ref, **self.body(obj)}

    def stored(self, oid: int) -> bool:
        """Whether the object of id ``oid`` has an id in this save already."""
        return oid in self.seen or (self.journal is not None and self.journal.ref(oid) is not None)

    def register(self, records: list, first: int) -> None:
        """Give ``records`` the ids ``first``, ``first + 1``, … (a later reference to one is a ref)."""
        self.seen.update(zip(map(id, records), range(first, first + len(records))))
        self.keep.extend(records)

    def records(self, obj: list) -> dict | None:
        """A list of records as JSON as it stands ({"records": the list, "first": the first record's id}), or
        None when an entry is not a fresh record of plain keys and values (then the general walk stores it). A list
        of such values alone (a run's wall times) is stored as it stands too ({"values": the list})."""
        kind = plain_kind(obj, self.stored)  # (a NaN or inf among the floats: save_state's allow_nan=False, then the walk)
        if kind == "values":
            return {"values": obj}
        if kind is None:
            return None
        first = self.ids(len(obj))
        self.register(obj, first)
        return {"records": obj, "first": first}

    def body(self, obj) -> dict:
        if type(obj) is list and obj:  # (a sidecar entry holds no NaN: it stays in save_state's second walk)
            if self.journal is not None and (entry := self.journal.entry(self, obj)) is not None:
                return entry
            if self.use_records and (records := self.records(obj)) is not None:
                return records
        if isinstance(obj, np.ndarray):
            return {"ndarray": self.array(obj)}
        if isinstance(obj, np.generic):
            return {"scalar": self.array(np.asarray(obj))}
        if _is_tensor(obj):
            t = obj.detach().cpu().contiguous()
            dtype = str(t.dtype).removeprefix("torch.")
            try:
                data = t.numpy()
                raw = False
            except TypeError:  # bfloat16 & co: store the bits
                data, raw = t.view({2: _torch().int16, 1: _torch().int8}[t.element_size()]).numpy(), True
            return {"tensor": self.array(data), "dtype": dtype, "raw": raw, "grad": bool(obj.requires_grad),
                    "parameter": type(obj).__name__ == "Parameter"}
        if isinstance(obj, np.random.Generator):
            bg = obj.bit_generator
            ss = bg.seed_seq
            return {"generator": type(bg).__name__, "state": self.node(bg.state),
                    "seed_seq": None if ss is None else self.node(
                        {"entropy": ss.entropy, "spawn_key": list(ss.spawn_key), "pool_size": ss.pool_size,
                         "n_children_spawned": ss.n_children_spawned})}
        if isinstance(obj, OrderedDict):
            return {"odict": [[self.node(k), self.node(v)] for k, v in obj.items()]}
        if type(obj) is dict:
            return {"dict": [[self.node(k), self.node(v)] for k, v in obj.items()]}
        if type(obj) is list:
            return {"list": [self.node(v) for v in obj]}
        if type(obj) is tuple:
            return {"tuple": [self.node(v) for v in obj]}
        cls = type(obj)
        if cls.__module__.startswith("testbed.") and hasattr(obj, "__dict__"):
            return {"object": f"{cls.__module__}:{cls.__qualname__}", "attrs": self.node(dict(vars(obj)))}
        raise CheckpointError(f"checkpoint: cannot store a {cls.__module__}.{cls.__qualname__} as data")


def save_state(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as a data-only checkpoint (atomically), whole (no sidecar)."""
    write_tree(path, obj)


def write_tree(path: str | os.PathLike, obj, journal=None) -> None:
    """Write ``obj``'s tree and arrays as an ``.npz`` (atomically). With ``journal`` (a save plan, see
    :class:`_Writer`) long lists may be sidecar entries: ``journal.flush()`` appends their lines to the sidecar
    before the ``.npz`` is written and returns the sidecar's new length, which the tree records."""
    def tree(records: bool) -> tuple[_Writer, str]:
        w = _Writer(records, journal)
        root = w.node(obj)
        head = {"format": FORMAT} if journal is None else {"format": FORMAT_JOURNAL, "journal": journal.flush()}
        return w, json.dumps({**head, "root": root}, separators=(",", ":"), allow_nan=False)

    try:  # every other non-finite float is already {"float": repr}: a ValueError means one inside a record
        w, text = tree(True)
    except ValueError:
        if journal is not None:
            journal = journal.restart()
        w, text = tree(False)
    save_npz(path, {**w.arrays, TREE: np.frombuffer(text.encode(), dtype=np.uint8)})


def _class(name: str):
    module, _, qual = name.partition(":")
    if not (module.startswith("testbed.") and qual):
        raise CheckpointError(f"checkpoint names class {name!r}, which is not a testbed class; refusing to load it")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type) or not obj.__module__.startswith("testbed."):
        raise CheckpointError(f"checkpoint names class {name!r}, which is not a testbed class; refusing to load it")
    return obj


class _Reader:
    def __init__(self, arrays, segments: dict[int, list] | None = None):
        self.arrays = arrays
        self.segments = segments or {}  # the sidecar's lists, by key
        self.objs: dict[int, object] = {}
        self.journalled: list[tuple[list, int, str]] = []  # (list, key, kind) of each sidecar entry read

    def plain(self, out, kind: str, first) -> list:
        """A values or records entry's list, checked (records keep the ids ``first``, ``first + 1``, …)."""
        if kind == "values":
            if not isinstance(out, list) or not set(map(type, out)) <= _RECORD_VALUES:
                raise ValueError("malformed values entry")
            return out
        if not (kind == "records" and isinstance(out, list) and all(type(r) is dict for r in out)
                and type(first) is int):
            raise ValueError("malformed records entry")
        self.objs.update(zip(range(first, first + len(out)), out))  # fresh dicts from json.loads
        return out

    def node(self, n):
        if n is None or isinstance(n, (bool, int, str)):
            return n
        if isinstance(n, float):
            return n
        if "float" in n:
            return float(n["float"])
        if "ref" in n:
            return self.objs[n["ref"]]
        ref = n["id"]
        if "ndarray" in n:
            out = self.arrays[n["ndarray"]]
        elif "scalar" in n:
            out = self.arrays[n["scalar"]][()]
        elif "tensor" in n:
            torch = _torch()
            t = torch.from_numpy(np.array(self.arrays[n["tensor"]]))
            if n["raw"]:
                t = t.view(getattr(torch, n["dtype"]))
            out = torch.nn.Parameter(t, requires_grad=n["grad"]) if n["parameter"] else t.requires_grad_(n["grad"])
        elif "generator" in n:
            ss = self.node(n["seed_seq"])
            seq = None if ss is None else np.random.SeedSequence(
                ss["entropy"], spawn_key=tuple(ss["spawn_key"]), pool_size=ss["pool_size"],
                n_children_spawned=ss["n_children_spawned"])
            kind = getattr(np.random, n["generator"], None)
            if not (isinstance(kind, type) and issubclass(kind, np.random.BitGenerator)):
                raise CheckpointError(f"checkpoint names bit generator {n['generator']!r}; refusing to load it")
            bg = kind(seq)
            bg.state = self.node(n["state"])
            out = np.random.Generator(bg)
        elif "odict" in n:
            out = OrderedDict()
            self.objs[ref] = out
            for k, v in n["odict"]:
                out[self.node(k)] = self.node(v)
        elif "dict" in n:
            out = {}
            self.objs[ref] = out
            for k, v in n["dict"]:
                out[self.node(k)] = self.node(v)
        elif "values" in n:
            out = self.plain(n["values"], "values", None)
        elif "records" in n:
            out = self.plain(n["records"], "records", n["first"])
        elif "journal" in n:  # a list whose elements are in the sidecar
            out = self.segments.get(n["journal"])
            if out is None or len(out) != n["count"]:
                raise ValueError(f"sidecar list {n['journal']!r} is missing or not {n['count']!r} long")
            self.plain(out, n["kind"], n.get("first"))
            self.journalled.append((out, n["journal"], n["kind"]))
        elif "list" in n:
            out = []
            self.objs[ref] = out
            out.extend(self.node(v) for v in n["list"])
        elif "tuple" in n:
            out = tuple(self.node(v) for v in n["tuple"])
        elif "object" in n:
            cls = _class(n["object"])
            out = cls.__new__(cls)
            self.objs[ref] = out
            out.__dict__.update(self.node(n["attrs"]))
        else:
            raise CheckpointError(f"checkpoint: unknown entry {sorted(n)}")
        self.objs[ref] = out
        return out


def read_sidecar(path: Path, length: int) -> tuple[dict[int, list], dict[int, int]]:
    """The lists in the first ``length`` bytes of ``path``'s sidecar (by key) and the bytes each one takes."""
    if length == 0:  # (no sidecar written yet)
        return {}, {}
    with open(sidecar(path), "rb") as f:
        data = f.read(length)
    if len(data) != length or not data.endswith(b"\n"):
        raise ValueError(f"its sidecar {sidecar(path).name} holds {len(data)} of the {length} bytes committed")
    segments: dict[int, list] = {}
    sizes: dict[int, int] = {}
    for line in data.split(b"\n")[:-1]:
        seg = json.loads(line)
        if not (type(seg) is dict and type(seg.get("list")) is int and type(seg.get("items")) is list):
            raise ValueError("malformed sidecar line")
        segments.setdefault(seg["list"], []).extend(seg["items"])
        sizes[seg["list"]] = sizes.get(seg["list"], 0) + len(line) + 1
    return segments, sizes


def read_state(path: str | os.PathLike) -> tuple[object, _Reader, int | None, dict[int, int]]:
    """The state in checkpoint ``path``, the reader that built it, the sidecar's committed length (None without a
    sidecar) and the bytes each sidecar list takes; anything but a checkpoint is a one-line CheckpointError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a data-only testbed checkpoint ({e}); "
                              "delete it or rerun with --overwrite") from None
    try:
        tree = json.loads(arrays.pop(TREE).tobytes().decode())
        length, segments, sizes = None, {}, {}
        if tree.get("format") == FORMAT_JOURNAL:
            length = tree["journal"]
            if type(length) is not int or length < 0:
                raise ValueError(f"sidecar length {length!r}")
            segments, sizes = read_sidecar(path, length)
        elif tree.get("format") != FORMAT:
            raise ValueError(f"format {tree.get('format')!r}, expected {FORMAT!r} or {FORMAT_JOURNAL!r}")
        reader = _Reader(arrays, segments)
        return reader.node(tree["root"]), reader, length, sizes
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError, ImportError, OSError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a data-only testbed checkpoint ({e}); "
                              "delete it or rerun with --overwrite") from None


def load_state(path: str | os.PathLike):
    """Read a checkpoint written by :func:`save_state` or :class:`~testbed.training.journal.Checkpointer` (with its
    sidecar, up to the committed length); anything else is a one-line CheckpointError."""
    return read_state(path)[0]
