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


class CheckpointError(InputError):
    """A checkpoint that is not a data-only testbed checkpoint (or names a class outside testbed)."""


def _torch():
    import torch

    return torch


def _is_tensor(obj) -> bool:
    return type(obj).__module__.startswith("torch") and type(obj).__name__ in ("Tensor", "Parameter")


class _Writer:
    def __init__(self, records: bool = True):
        self.use_records = records
        self.arrays: dict[str, np.ndarray] = {}
        self.seen: dict[int, int] = {}
        self.keep: list = []  # keeps memoised objects alive, so ids stay unique while writing

    def array(self, a: np.ndarray) -> str:
        if a.dtype.hasobject:
            raise CheckpointError("checkpoint: object arrays cannot be stored as data")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # (keeps 0-d arrays 0-d)
        return name

    def node(self, obj):
        if obj is None or type(obj) in (bool, int, str):
            return obj
        if type(obj) is float:  # (numpy scalars, float subclasses included, keep their type below)
            return obj if np.isfinite(obj) else {"float": repr(obj)}
        key = id(obj)
        if key in self.seen:
            return {"ref": self.seen[key]}
        ref = len(self.seen)
        self.seen[key] = ref
        self.keep.append(obj)
        return {"id": ref, **self.body(obj)}

    def records(self, obj: list) -> dict | None:
        """A list of records as JSON as it stands ({"records": the list, "first": the first record's id}), or
        None when an entry is not a fresh record of plain keys and values (then the general walk stores it). A list
        of such values alone (a run's wall times) is stored as it stands too ({"values": the list})."""
        kinds = set(map(type, obj))
        if kinds <= _RECORD_VALUES:
            return {"values": obj}
        if kinds != {dict} or any(id(rec) in self.seen for rec in obj):
            return None
        if set(map(type, chain.from_iterable(obj))) != {str}:  # the keys
            return None
        if not set(map(type, chain.from_iterable(rec.values() for rec in obj))) <= _RECORD_VALUES:
            return None  # (a NaN or inf among the floats: save_state's allow_nan=False, then the general walk)
        first = len(self.seen)
        for i, rec in enumerate(obj):
            self.seen[id(rec)] = first + i
            self.keep.append(rec)
        return {"records": obj, "first": first}

    def body(self, obj) -> dict:
        if self.use_records and type(obj) is list and obj and (records := self.records(obj)) is not None:
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
    """Write ``obj`` as a data-only checkpoint (atomically)."""
    try:  # every other non-finite float is already {"float": repr}: a ValueError means one inside a record
        w = _Writer()
        tree = json.dumps({"format": FORMAT, "root": w.node(obj)}, separators=(",", ":"), allow_nan=False)
    except ValueError:
        w = _Writer(records=False)
        tree = json.dumps({"format": FORMAT, "root": w.node(obj)}, separators=(",", ":"), allow_nan=False)
    save_npz(path, {**w.arrays, TREE: np.frombuffer(tree.encode(), dtype=np.uint8)})


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
    def __init__(self, arrays):
        self.arrays = arrays
        self.objs: dict[int, object] = {}

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
            out = n["values"]
            if not isinstance(out, list) or not set(map(type, out)) <= _RECORD_VALUES:
                raise ValueError("malformed values entry")
        elif "records" in n:  # fresh dicts from json.loads; each keeps the id it was written with
            out = n["records"]
            if not (isinstance(out, list) and all(type(r) is dict for r in out) and type(n["first"]) is int):
                raise ValueError("malformed records entry")
            for i, rec in enumerate(out):
                self.objs[n["first"] + i] = rec
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


def load_state(path: str | os.PathLike):
    """Read a checkpoint written by :func:`save_state`; anything else is a one-line CheckpointError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a data-only testbed checkpoint ({e}); "
                              "delete it or rerun with --overwrite") from None
    try:
        tree = json.loads(arrays.pop(TREE).tobytes().decode())
        if tree.get("format") != FORMAT:
            raise ValueError(f"format {tree.get('format')!r}, expected {FORMAT!r}")
        return _Reader(arrays).node(tree["root"])
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError, ImportError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a data-only testbed checkpoint ({e}); "
                              "delete it or rerun with --overwrite") from None
