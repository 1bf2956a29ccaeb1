"""The LM spec's checks that need more than the field's own value: a model entry's sizes and dtype, the
LoRA block against the model's modules (on the meta device: nothing is allocated), a reward module that
must import, a prompt set's lengths, and — before a real run builds anything — that a hub model has a
local copy when the hub is offline and that a reward token is one token of the tokenizer.

Every check raises :class:`InputError` naming the field; none builds a model.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from testbed.errors import InputError, check_memory, nonneg_int, positive_int

DTYPES = ("float32", "float64", "bfloat16", "float16")  # float64: tight comparisons (tests)
TRAINING_COPIES = 5
"""float32 copies of every parameter a run holds: the weights, their gradients, Adam's two moments, and pi_ref."""


def check_model_fields(entry: dict, where: str) -> None:
    """Sizes, seed, dtype, random_init and tokenizer of a model entry (tiny sizes also against memory)."""
    from testbed.llm.models import TINY
    from testbed.llm.toy import WORDS

    for k in ("hidden", "layers", "heads"):
        if k in entry:
            positive_int(f"{where}.{k}", entry[k])
    if "seed" in entry:
        nonneg_int(f"{where}.seed", entry["seed"])
    if "dtype" in entry and entry["dtype"] not in DTYPES:
        raise InputError(f"{where}.dtype must be one of {', '.join(DTYPES)} (got {entry['dtype']!r})")
    for k in ("random_init", "gradient_checkpointing"):
        if k in entry and not isinstance(entry[k], bool):
            raise InputError(f"{where}.{k} must be true or false (got {entry[k]!r})")
    if "tokenizer" in entry:
        t = entry["tokenizer"]
        if not isinstance(t, str) or not Path(t).is_dir():
            raise InputError(f"{where}.tokenizer must be a folder holding a tokenizer (got {t!r}: not a folder)")
    if entry.get("name") in TINY and entry.get("path") is None:
        hidden, layers, heads = entry.get("hidden", 32), entry.get("layers", 2), entry.get("heads", 2)
        if hidden % heads:
            raise InputError(f"{where}.hidden = {hidden} must be divisible by {where}.heads = {heads} "
                             "(each attention head gets hidden / heads dimensions)")
        params = 12 * layers * hidden**2 + (len(WORDS) + 3 + 64) * hidden  # blocks + token and position embeddings
        check_memory(where, f"a {layers}-layer model of width {hidden} (~{params:.3g} parameters, "
                     f"{TRAINING_COPIES} float32 copies)", 4.0 * TRAINING_COPIES * params)


def check_lora(lora: dict, model: dict) -> dict:
    """The LoRA block with numbers checked; ``target_modules`` must name modules the model has."""
    from testbed.errors import positive_number

    r = positive_int("lora.r", lora.get("r", 8))
    alpha = positive_number("lora.alpha", lora.get("alpha", 2 * r))
    dropout = lora.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InputError(f"lora.dropout must be a probability in [0, 1) (got {dropout!r})")
    targets = lora.get("target_modules")
    if targets is not None and targets != "all-linear":
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise InputError(f"lora.target_modules must be a list of module names or 'all-linear' (got {targets!r})")
        names = module_names(model)
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and not n.rsplit(".", 1)[-1].isdigit()})
            raise InputError(f"lora.target_modules: the model has no module {missing[0]!r}; its modules are "
                             f"{', '.join(leaves)}")
    return {"r": r, "alpha": float(alpha), "dropout": float(dropout), "target_modules": targets}


def module_names(model: dict) -> list[str]:
    """The named modules of a model entry's architecture, built on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoModelForCausalLM

    from testbed.llm.models import model_config

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(model_config(model))
    return [n for n, _ in m.named_modules()]


def check_prompt_lengths(entry: dict, where: str) -> None:
    lo, hi = entry.get("min_len", 2), entry.get("max_len", 4)
    positive_int(f"{where}.min_len", lo)
    positive_int(f"{where}.max_len", hi)
    if lo > hi:
        raise InputError(f"{where}.min_len = {lo} must not exceed {where}.max_len = {hi}")


PROMPT_BYTES = 256
"""A toy prompt held in memory (a short Python string and its token ids): an upper estimate."""


def check_reward_module(spec: str, where: str):
    """``module: pkg.mod:fn`` must import and name a callable; returns it."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InputError(f"{where} must be of the form pkg.mod:fn (got {spec!r})")
    mod, fn = spec.split(":")
    try:
        module = importlib.import_module(mod)
    except Exception as e:  # the user's module: any error on import is theirs
        raise InputError(f"{where}: module {mod!r} does not import ({type(e).__name__}: {e})") from None
    f = getattr(module, fn, None)
    if not callable(f):
        raise InputError(f"{where}: module {mod!r} has no function {fn!r}")
    return f


def hub_offline() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def check_local_copy(entry: dict, where: str) -> None:
    """A hub model with the hub offline needs a copy in the local cache (else from_pretrained fails after the set-up)."""
    from testbed.llm.models import PACKAGED, TINY

    name, path = entry.get("name"), entry.get("path")
    if path is not None and not (Path(path) / "config.json").is_file():  # a pipeline stage that has not run yet
        raise InputError(f"{where}.path {path!r} is not a model folder (no config.json); run the stage that writes it first")
    if path is not None or name in TINY or name in PACKAGED or entry.get("random_init") or not hub_offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise InputError(f"{where}: {name!r} has no local copy and the hub is offline (HF_HUB_OFFLINE); download it "
                         "first, or give {path: DIR} (a folder from save_pretrained)")


def check_before_build(spec) -> None:
    """What a real run (not a dry run) must have before it builds a model: local copies of hub models when
    offline, a count_token reward's token as one token of the policy's tokenizer, and no prompt (in a prompts file or
    an algorithm's dataset) that tokenises to nothing."""
    from testbed.llm.spec import PREFERENCES

    check_local_copy(spec.model, "model")
    files = [(f"{field} (file {str(e['file'])!r})", e["file"]) for field, e in
             (("prompts", spec.prompts), ("eval_prompts", spec.eval_prompts)) if "file" in e]
    files += [(f"dataset {str(c.dataset)!r}", c.dataset) for _, c, _ in spec.algorithms
              if getattr(c, "dataset", "") and c.dataset != PREFERENCES]
    if files:
        from testbed.io import read_jsonl
        from testbed.llm.data import check_prompts
        from testbed.llm.models import load_tokenizer

        tok = load_tokenizer(spec.model)
        for where, path in files:
            check_prompts(tok, [row["prompt"] for row in read_jsonl(path, ("prompt",))], where)
    r = spec.reward
    if r.get("kind") == "model" and "name" in r:
        check_local_copy({k: r[k] for k in ("name", "path") if k in r}, "reward")
    if r.get("kind") == "function" and r.get("name") == "count_token" and not r.get("module"):
        from testbed.llm.models import load_tokenizer

        token = r.get("token", "good")
        tok = load_tokenizer(spec.model)
        tid = tok.convert_tokens_to_ids(token)
        if tid is None or tid == tok.unk_token_id or tid in (tok.pad_token_id, tok.eos_token_id):
            raise InputError(f"reward.token {token!r} is not a token of the model's tokenizer (it would count "
                             "padding); give one of its words")


def lm_input_files(spec) -> list[str]:
    """The files (and model folders) an LM spec reads: prompt files, algorithm datasets, local models, the sources
    of user rules and reward modules — whose hashes go into the run's config, so a resume notices an edited one."""
    from testbed.llm.spec import PREFERENCES

    base = Path(spec.source).parent if spec.source != "<spec>" else Path(".")
    paths = [e["file"] for e in (spec.prompts, spec.eval_prompts) if "file" in e]
    paths += [c.dataset for _, c, _ in spec.algorithms if getattr(c, "dataset", "") and c.dataset != PREFERENCES]
    paths += [m["path"] if Path(m["path"]).is_absolute() else str(base / m["path"])
              for m in (spec.model, spec.reward) if m.get("path")]
    return paths + module_files(spec)


def module_files(spec) -> list[str]:
    """The source files of a spec's ``{module: ...}`` entries (user rules, a reward function; LM and image specs)."""
    from testbed.algorithms.user import module_file

    targets = [getattr(c, "module", None) for _, c, _ in spec.algorithms] + [(spec.reward or {}).get("module")]
    return [f for f in map(module_file, targets) if f]


def run_key(spec, entry: dict, seed: int, inputs: dict[str, str]) -> str:
    """A run's name in <out>.partial: a hash of everything it depends on (the spec but its other algorithms and
    seeds, its own algorithm entry and seed, the input hashes)."""
    from testbed.results import content_key

    common = {k: v for k, v in spec.raw.items() if k not in ("algorithms", "seeds", "name")}
    return content_key([common, entry, seed, inputs])
