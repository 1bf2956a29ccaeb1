"""Chained LM stages: the paper's TL;DR pipeline (SFT → reward model → REBEL / PPO / DPO / RLOO → evaluation).

A pipeline folder holds ``pipeline.yaml``::

    name: tldr_pythia_1.4b
    out: runs/tldr_pythia_1.4b          # stage S writes <out>/<S>/ (a run folder)
    stages:
      - {name: sft, kind: sft, model: EleutherAI/pythia-1.4b-deduped, data: {...}, train: {...}, seed: 555134}
      - {name: rm, kind: reward_model, model: {from: sft}, data: {...}, train: {...}, seed: 66613}
      - {name: rebel, kind: lm, spec: {model: {from: sft, ...}, reward: {from: rm}, ...}}
      - {name: ppo, kind: lm, like: rebel, spec: {algorithms: [{name: ppo, ...}]}}   # rebel's spec, keys replaced
      - {name: eval, kind: eval, policies: [rebel, ...], reference: sft, reward: rm, judge: {...}, data: {...}}

``{from: S}`` names an earlier stage; it becomes ``path: <out>/S/checkpoints/<run id>`` (the model that stage saves:
``<algorithm>-0-s<seed>``, the first algorithm and first seed of its merged spec, a ``like:`` stage's inherited ones
included; :func:`stage_model_path`, which the writers and readers share) with the architecture of S's model, so a
dry run counts parameters before the folder exists. A policy (an lm stage's ``model``, eval's ``policies`` and
``reference``) comes from an sft or lm stage, a reward (an lm stage's ``reward``, eval's ``reward`` and ``judge``)
from a reward_model stage. ``sft`` and ``reward_model`` stages train on a hub data set's pre-tokenised
fields (the official ``sft.py``/``rm.py``); ``lm`` stages are LM specs (:mod:`testbed.llm.spec`, validated by it);
``eval`` scores each policy with the reward stage's model, its KL to the reference stage, and its win rate against
the data set's reference summaries judged by ``judge`` (a held-out reward model, or ``module: pkg.mod:fn`` for an
LLM judge). :func:`plan_pipeline` is ``testbed llm pipeline DIR --dry-run``.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from testbed.errors import InputError, nonneg_int, positive_int
from testbed.io import read_yaml
from testbed.llm.memory import DTYPE_BYTES, GIB, Held, activation_bytes, config_sizes, layer_values, state_bytes
from testbed.run_table import make_run_id

KINDS = ("sft", "reward_model", "lm", "eval")
TRAIN_KEYS = {"lr": float, "adam_eps": float, "scheduler": str, "epochs": int, "per_device_batch": int,
              "grad_accum": int, "processes": int, "seq": int}
SCHEDULERS = ("cosine", "linear", "constant")
OPTIONAL_TRAIN_KEYS = {"weight_decay": float, "max_grad_norm": float}  # official: torch AdamW's 0.01, no clipping
DATA_KEYS = {"hf_dataset", "file", "split", "fields", "count"}


def stage_run_id(stage: dict) -> str:
    """The run id of the model a validated stage saves (its ``checkpoints/`` sub-folder): an lm stage's first
    algorithm and first seed of its merged spec (a ``like:`` stage's inherited keys included), as
    :mod:`testbed.llm.train` names it; an sft / reward_model stage's ``<kind>-0-s<seed>``."""
    if stage["kind"] == "lm":
        spec = stage["lm_spec"]
        return make_run_id(spec.algorithms[0][0], 0, spec.seeds[0])
    return make_run_id(stage["kind"], 0, stage.get("seed", 0))


def stage_model_path(out: Path, stage: dict) -> str:
    """Where a validated stage's trained model lands: ``<out>/<stage>/checkpoints/<run id>`` (the writers and
    every reader: ``{from: S}``, the eval stage)."""
    return str(out / stage["name"] / "checkpoints" / stage_run_id(stage))


def stage_reads(st: dict) -> list[str]:
    """The earlier stages whose saved models a validated stage loads (``{from: S}``, eval's policies and models)."""
    if st["kind"] == "eval":
        names = [*st["policies"], st["reference"], st["reward"], st.get("judge_from")]
    else:
        names = [st.get("model_from"), st.get("reward_from")]
    return list(dict.fromkeys(n for n in names if n))


def _resolve(entry, where: str, done: dict, out: Path, keep: tuple = ()):
    """A model entry with ``from: STAGE`` replaced by that stage's output folder and architecture."""
    if isinstance(entry, dict) and "from" in entry:
        src = entry["from"]
        if not isinstance(src, str):
            raise InputError(f"{where}.from must be the name of an earlier stage (got {src!r})")
        if src not in done:
            raise InputError(f"{where}.from: {src!r} is not an earlier stage (earlier: {', '.join(done) or 'none'})")
        if done[src]["kind"] == "eval":
            raise InputError(f"{where}.from: stage {src!r} is an evaluation; it saves no model")
        base = {k: v for k, v in done[src]["model"].items() if k in ("name", "hidden", "layers", "heads", "seed")}
        return {**base, **{k: v for k, v in entry.items() if k != "from"}, "path": stage_model_path(out, done[src])}, src
    return entry, None


def _model(entry, where: str, done: dict, out: Path) -> tuple[dict, str | None]:
    from testbed.llm.models import check_model
    entry, src = _resolve(entry, where, done, out)
    return check_model(entry, where), src


def _check_data(entry, where: str) -> dict:
    src = entry.get("hf_dataset", entry.get("file")) if isinstance(entry, dict) else None
    if not isinstance(src, str) or not src:
        raise InputError(f"{where} must be {{hf_dataset: NAME, split, fields: [...], count}} or {{file: PATH.jsonl, fields}}")
    bad = sorted(set(entry) - DATA_KEYS)
    if bad:
        raise InputError(f"{where}: unknown key(s) {bad}; expected some of {sorted(DATA_KEYS)}")
    fields = entry.get("fields")
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f for f in fields):
        raise InputError(f"{where}.fields must be a list of the data set's column names (got {fields!r})")
    if "count" in entry:
        positive_int(f"{where}.count", entry["count"])
    return entry


def _deepspeed(path, where: str, folder: Path) -> tuple[int, bool]:
    """(ZeRO stage, 16-bit) of a stage's DeepSpeed JSON config (none: (0, False), plain torch AdamW)."""
    from testbed.llm.distributed import deepspeed_settings, read_deepspeed
    if path is None:
        return 0, False
    if not isinstance(path, str) or not path:
        raise InputError(f"{where} must be the path of a DeepSpeed JSON config (got {path!r})")
    p = Path(path) if Path(path).is_absolute() else folder / path
    return deepspeed_settings(read_deepspeed(str(p), where), where)


def _check_train(entry, where: str) -> dict:
    from testbed.errors import positive_number
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a mapping of {sorted(TRAIN_KEYS)}")
    bad = sorted(set(entry) - set(TRAIN_KEYS) - set(OPTIONAL_TRAIN_KEYS))
    if bad:
        raise InputError(f"{where}: unknown key(s) {bad}; expected some of {sorted(TRAIN_KEYS)}")
    missing = sorted(set(TRAIN_KEYS) - set(entry))
    if missing:
        raise InputError(f"{where}: missing {missing} (the official values are set explicitly)")
    for k, t in {**TRAIN_KEYS, **{k: v for k, v in OPTIONAL_TRAIN_KEYS.items() if k in entry}}.items():
        if k in OPTIONAL_TRAIN_KEYS:
            from testbed.errors import nonneg_number
            nonneg_number(f"{where}.{k}", entry[k])
        elif t is int:
            positive_int(f"{where}.{k}", entry[k])
        elif t is float:
            positive_number(f"{where}.{k}", entry[k])
    if entry["scheduler"] not in SCHEDULERS:
        raise InputError(f"{where}.scheduler must be one of {', '.join(SCHEDULERS)} (got {entry['scheduler']!r})")
    return entry


def _check_recentre(st: dict, where: str) -> None:
    """``recentre: none | reference_mean`` (reward_model stages; ``reference_mean`` needs ``recentre_data`` with
    ``fields: [query, reference_response]`` or one whole-sequence field)."""
    from testbed.llm.rm import RECENTRE
    mode = st.get("recentre", "none")
    if mode not in RECENTRE or st["kind"] != "reward_model" and "recentre" in st:
        raise InputError(f"{where}.recentre must be one of {', '.join(RECENTRE)} (reward_model stages only; got {mode!r})")
    if mode == "none":
        if "recentre_data" in st:
            raise InputError(f"{where}.recentre_data is read only with recentre: reference_mean")
        return
    d = _check_data(st.get("recentre_data"), f"{where}.recentre_data")
    if len(d["fields"]) > 2:
        raise InputError(f"{where}.recentre_data.fields must be [query, reference_response] or [sequence] "
                         f"(got {d['fields']})")


POLICY, REWARD = ("sft", "lm"), ("reward_model",)  # the stage kinds that save a policy / a reward model


def _check_source(where: str, src: str | None, done: dict, kinds: tuple) -> None:
    """A stage read as a policy (``kinds`` POLICY) or as a reward model (REWARD) must be one."""
    if src is not None and done[src]["kind"] not in kinds:
        what = "a policy (an sft or lm stage)" if kinds == POLICY else "a reward_model stage"
        raise InputError(f"{where}: stage {src!r} is a {done[src]['kind']} stage, not {what}")


def _check_eval(st: dict, where: str, done: dict) -> None:
    from testbed.errors import positive_number
    for j, p in enumerate(st["policies"]):
        _check_source(f"{where}.policies[{j}]", p, done, POLICY)
    _check_source(f"{where}.reference", st["reference"], done, POLICY)
    _check_source(f"{where}.reward", st["reward"], done, REWARD)
    _check_source(f"{where}.judge.from", st.get("judge_from"), done, REWARD)
    if len(st["data"]["fields"]) != 2:
        raise InputError(f"{where}.data.fields must be [query, reference_response] (got {st['data']['fields']})")
    positive_number(f"{where}.temperature", st.get("temperature", 0.01))
    positive_int(f"{where}.max_new_tokens", st.get("max_new_tokens", 53))
    nonneg_int(f"{where}.seed", st.get("seed", 0))


def load_pipeline(folder: str | Path) -> dict:
    """Validate ``<folder>/pipeline.yaml``: every stage, every ``from`` reference, every LM spec; nothing is built."""
    from testbed.llm.spec import parse_lm_spec

    folder = Path(folder)
    f = folder / "pipeline.yaml"
    if not f.is_file():
        raise InputError(f"pipeline {str(folder)!r}: no pipeline.yaml in it")
    raw = read_yaml(f, "pipeline")
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list) or not raw["stages"]:
        raise InputError("pipeline.stages must be a non-empty list of stages")
    if raw.get("out") is not None and (not isinstance(raw["out"], str) or not raw["out"]):
        raise InputError(f"pipeline.out must be a folder path (got {raw['out']!r})")
    out = Path(raw.get("out") or f"runs/{raw.get('name') or folder.name}").absolute()  # as --out: from the working folder
    done: dict[str, dict] = {}
    for i, st in enumerate(raw["stages"]):
        where = f"stages[{i}]"
        if not isinstance(st, dict) or not isinstance(st.get("name"), str) or not st["name"]:
            raise InputError(f"{where} must be a mapping with a name")
        st = copy.deepcopy(st)
        name, kind = st["name"], st.get("kind")
        where = f"stages[{i}] ({name})"
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):  # <out>/<name>/ is its folder
            raise InputError(f"{where}.name must be a folder name: letters, digits, '_', '-', '.', not starting "
                             f"with '.' or '-' (got {name!r})")
        if name in done:
            raise InputError(f"{where}.name: a stage {name!r} comes earlier")
        if kind not in KINDS:
            raise InputError(f"{where}.kind must be one of {', '.join(KINDS)} (got {kind!r})")
        if kind in ("sft", "reward_model"):
            st["model"], st["model_from"] = _model(st.get("model"), f"{where}.model", done, out)
            for k in ("data", "eval_data"):
                if k == "data" or st.get(k) is not None:
                    fields = _check_data(st.get(k), f"{where}.{k}")["fields"]
                    if kind == "reward_model" and len(fields) != 2:
                        raise InputError(f"{where}.{k}.fields must be [chosen, rejected] sequences (got {fields})")
            _check_train(st.get("train"), f"{where}.train")
            nonneg_int(f"{where}.seed", st.get("seed", 0))
            st["zero_stage"], st["deepspeed_16bit"] = _deepspeed(st.get("deepspeed"), f"{where}.deepspeed", folder)
            st["deepspeed_path"] = os.path.abspath(folder / st["deepspeed"]) if st.get("deepspeed") else None
            from testbed.llm.sft import LOSSES
            if st.get("loss", "sequence") not in LOSSES or kind == "reward_model" and "loss" in st:
                raise InputError(f"{where}.loss must be one of {', '.join(LOSSES)} (sft stages only; got {st.get('loss')!r})")
            _check_recentre(st, where)
        elif kind == "lm":
            spec = st.get("spec")
            if not isinstance(spec, dict):
                raise InputError(f"{where}.spec must be an LM spec mapping")
            like = st.get("like")
            if like is not None:  # another lm stage's spec with these top-level keys replaced
                if not isinstance(like, str) or like not in done or done[like]["kind"] != "lm":
                    raise InputError(f"{where}.like: {like!r} is not an earlier lm stage")
                spec = {**copy.deepcopy(done[like]["raw_spec"]), **spec}
            st["raw_spec"] = copy.deepcopy(spec)
            spec["model"], st["model_from"] = _resolve(spec.get("model"), f"{where}.spec.model", done, out)
            _check_source(f"{where}.spec.model.from", st["model_from"], done, POLICY)
            rw = spec.get("reward")
            if isinstance(rw, dict) and "from" in rw:
                m, st["reward_from"] = _resolve({"from": rw["from"]}, f"{where}.spec.reward", done, out)
                _check_source(f"{where}.spec.reward.from", st["reward_from"], done, REWARD)
                spec["reward"] = {**{k: v for k, v in rw.items() if k != "from"}, "kind": "model",
                                  **{k: v for k, v in m.items() if k in ("name", "path")}}
            spec.setdefault("name", f"{raw.get('name', folder.name)}_{name}")
            st["lm_spec"] = parse_lm_spec(spec, str(f))
            st["model"] = st["lm_spec"].model
        else:
            for k in ("policies",):
                if not isinstance(st.get(k), list) or not st[k]:
                    raise InputError(f"{where}.policies must be a list of earlier stages")
            for j, p in enumerate(st["policies"]):
                _resolve({"from": p}, f"{where}.policies[{j}]", done, out)
                if p in st["policies"][:j]:
                    raise InputError(f"{where}.policies[{j}]: {p!r} is listed twice (one row and one samples file each)")
            for k in ("reference", "reward"):
                _resolve({"from": st.get(k)}, f"{where}.{k}", done, out)
            judge = st.get("judge")
            if not isinstance(judge, dict):
                raise InputError(f"{where}.judge must be {{from: STAGE}}, a model entry {{name|path}} or {{module: pkg.mod:fn}}")
            if "module" in judge:
                from testbed.llm.checks import check_reward_module
                check_reward_module(judge["module"], f"{where}.judge.module")
            else:
                st["judge"], st["judge_from"] = _model(judge, f"{where}.judge", done, out)
            _check_data(st.get("data"), f"{where}.data")
            positive_int(f"{where}.per_device_batch", st.get("per_device_batch", 0))
            _check_eval(st, where, done)
        done[name] = st
    every = raw.get("checkpoint_every", 0)
    nonneg_int("pipeline.checkpoint_every", every)  # lm stages: a checkpoint every K iterations (0: none)
    return {"name": raw.get("name") or folder.name, "out": out, "stages": done, "source": str(f),
            "checkpoint_every": int(every)}


def _count(entry: dict, kind: str) -> int:
    from testbed.llm.models import count_parameters
    return count_parameters({k: v for k, v in entry.items() if k != "path" or Path(v, "config.json").is_file()}, kind)


def _sizes(entry: dict):
    """(hidden, layers, heads, vocab, values per token and hidden unit per layer) of a model entry's config."""
    from testbed.llm.models import model_config
    cfg = model_config({k: v for k, v in entry.items() if k != "path" or Path(v, "config.json").is_file()})
    return (*config_sizes(cfg), layer_values(cfg))


def stage_plan(st: dict, stages: dict) -> dict:
    """Models a stage holds, their parameters and memory per process (gradient checkpointing off)."""
    from testbed.llm.plan import plan

    kind = st["kind"]
    if kind == "lm":
        p = plan(st["lm_spec"])
        a = p["algorithms"][0]
        models = [{**m, "from": st.get("model_from") if m["model"] == "policy" else
                   st.get("reward_from") if m["model"] == "reward model" else None} for m in a["models"]]
        return {"models": models, "total_gib": a["total_gib"], "processes": p["processes"], "detail": a}
    if kind in ("sft", "reward_model"):
        tr = st["train"]
        head = "causal" if kind == "sft" else "score"
        P = _count(st["model"], head)
        dtype = st["model"].get("dtype", "float32")
        held = [Held("policy" if kind == "sft" else "reward model", P, P, dtype, dtype)]
        stt = state_bytes(held, st["zero_stage"], tr["processes"], st["deepspeed_16bit"])
        h, L, a, V, values = _sizes(st["model"])
        seqs = tr["per_device_batch"] * (1 if kind == "sft" else 2)  # the RM scores chosen and rejected together
        act = activation_bytes(h, L, a, V if kind == "sft" else 0, seqs, tr["seq"],
                              "bfloat16" if st["deepspeed_16bit"] else dtype, values=values)
        total = sum(stt.values()) + act
        return {"models": [{"model": held[0].name, "parameters": P, "trainable": P, "dtype": dtype,
                            "from": st["model_from"]}], "total_gib": total / GIB, "processes": tr["processes"],
                "detail": {k + "_gib": v / GIB for k, v in {**stt, "activations": act}.items()}}
    models = []  # eval: each policy, the reference policy, the reward model and the judge, one at a time, no gradients
    for role, src in (("policy under evaluation", st["policies"][0]), ("reference policy", st["reference"]),
                      ("reward model", st["reward"])):
        e = stages[src]["model"] if stages[src]["kind"] != "lm" else stages[src]["lm_spec"].model
        kindm = "score" if role == "reward model" else "causal"
        models.append({"model": role, "parameters": _count(e, kindm), "trainable": 0,
                       "dtype": e.get("dtype", "float32") if kindm == "causal" else "float32", "from": src})
    if "module" not in st["judge"]:
        models.append({"model": "judge", "parameters": _count(st["judge"], "score"), "trainable": 0,
                       "dtype": st["judge"].get("dtype", "float32"), "from": st["judge_from"]})
    weights = max(m["parameters"] * DTYPE_BYTES[m["dtype"]] for m in models)  # the phases load one model each
    return {"models": models, "total_gib": weights / GIB, "processes": 1, "detail": {}}


def plan_pipeline_text(folder: str | Path) -> str:
    pl = load_pipeline(folder)
    lines = [f"pipeline {pl['name']}: {len(pl['stages'])} stages -> {os.path.relpath(pl['out'])}/<stage>/"]
    for name, st in pl["stages"].items():
        p = stage_plan(st, pl["stages"])
        reads = sorted({m["from"] for m in p["models"] if m.get("from")})
        lines.append(f"  stage {name} ({st['kind']}" + (f", {st['lm_spec'].algorithms[0][0]}" if st["kind"] == "lm" else "")
                     + f"; reads {', '.join(f'{r}/' for r in reads) if reads else 'the hub only'}):")
        for m in p["models"]:
            train = f", {m['trainable']:,} trainable" if m["trainable"] else ", frozen"
            lines.append(f"      {m['model']}: {m['parameters']:,} parameters{train}, {m['dtype']}"
                         + (f" (from stage {m['from']})" if m.get("from") else ""))
        lines.append(f"      memory per GPU: {p['total_gib']:.1f} GiB on {p['processes']} process(es)"
                     + (" (the largest model's weights: one model at a time, no gradients)" if st["kind"] == "eval" else "")
                     + (f", ZeRO-{st['zero_stage']}" if st.get("zero_stage") else ""))
    lines.append("dry run: nothing downloaded, nothing trained")
    return "\n".join(lines)
