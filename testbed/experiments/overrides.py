"""``testbed run SPEC key=value ...``: command-line overrides of a spec, validated like the spec itself.

A key is a dotted path into the spec (``iterations=50``, ``seeds=3``, ``algorithms.0.eta=0.5``,
``problems.0.contexts=10``); a path through a list without an index sets the field in every entry
(``algorithms.eta=[0.1,1]``: every algorithm sweeps eta). Values are YAML (numbers, ``true``, lists).
A key that names nothing in the spec, or an index out of range, is a one-line error; the values are then
checked by the spec's own validation (an unknown algorithm parameter or a bad value names its field).
"""

from __future__ import annotations

import copy

import yaml

from testbed.errors import InputError

EXAMPLE = "e.g. iterations=50, seeds=3, algorithms.0.eta=0.5"


def _value(item: str):
    key, raw = item.split("=", 1)
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise InputError(f"override {item!r}: the value {raw!r} is not valid YAML") from None


def _set(node, parts: list[str], value, item: str, done: list[str], top: set[str] | None) -> None:
    head, rest = parts[0], parts[1:]
    where = ".".join(done) or "the spec"
    if isinstance(node, list):
        if head.isdigit():
            if int(head) >= len(node):
                raise InputError(f"override {item!r}: {where} has {len(node)} entries (indices 0..{len(node) - 1})")
            if not rest:
                node[int(head)] = value
                return
            _set(node[int(head)], rest, value, item, [*done, head], None)
        else:  # every entry of the list
            for i, entry in enumerate(node):
                _set(entry, parts, value, item, [*done, str(i)], None)
        return
    if not isinstance(node, dict):
        raise InputError(f"override {item!r}: {where} is a value ({node!r}), not a mapping or a list")
    if top is not None and head not in top:
        raise InputError(f"override {item!r}: unknown key {head!r}; a spec takes {', '.join(sorted(top))} ({EXAMPLE})")
    if not rest:
        node[head] = value
        return
    if head not in node:
        raise InputError(f"override {item!r}: {'.'.join([*done, head])} is not in the spec ({EXAMPLE})")
    _set(node[head], rest, value, item, [*done, head], None)


def apply_overrides(data: dict, items, top: set[str]) -> dict:
    """A copy of the spec ``data`` with each ``key=value`` of ``items`` applied in order."""
    data = copy.deepcopy(data)
    for item in items:
        if not isinstance(item, str) or "=" not in item or item.startswith("=") or not isinstance(data, dict):
            raise InputError(f"override {item!r} must look like key=value ({EXAMPLE})")
        key, value = _value(item)
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise InputError(f"override {item!r}: the key {key!r} has an empty part")
        _set(data, parts, value, item, [], top)
    return data
