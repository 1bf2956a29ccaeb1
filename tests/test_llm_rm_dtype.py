"""Reward models load in float32 (what the memory plans count) unless their entry sets a dtype, whatever dtype the
checkpoint was saved in (a bf16-saved reward model loaded as bf16 while the plan counted 4 bytes a parameter)."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402


@pytest.fixture(scope="module")
def bf16_rm(tmp_path_factory):
    from testbed.llm.toy import tiny_reward_model
    d = tmp_path_factory.mktemp("rm") / "bf16"
    tiny_reward_model("gpt2", hidden=32, layers=2, heads=2).to(torch.bfloat16).save_pretrained(d)
    return str(d)


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


@pytest.mark.parametrize("extra, want", [({}, torch.float32), ({"dtype": "bfloat16"}, torch.bfloat16),
                                         ({"dtype": "float64"}, torch.float64)], ids=["default", "bf16", "f64"])
def test_every_reward_model_loader_honours_the_entry_dtype(bf16_rm, extra, want):
    from testbed.llm.models import load_reward_model
    from testbed.llm.plan import plan
    from testbed.llm.rm import load_score_model
    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.task import make_reward
    from testbed.llm.toy import toy_tokenizer

    assert _dtype(load_reward_model({"path": bf16_rm, **extra})) == want
    assert _dtype(load_score_model({"path": bf16_rm, **extra}, pad=0, seed=0)) == want  # reward_model stages
    assert _dtype(load_reward_model({"name": "tiny:gpt2", **extra})) == want
    spec = parse_lm_spec({**toy_spec({"name": "rebel", "eta": 1.0}, iterations=1),
                          "reward": {"kind": "model", "path": bf16_rm, **extra}})
    assert _dtype(make_reward(spec, toy_tokenizer(), "cpu").model) == want  # lm stages, `testbed llm run`
    rm = [m for m in plan(spec)["algorithms"][0]["models"] if m["model"] == "reward model"]
    assert rm[0]["dtype"] == str(want).split(".")[1]  # the plan counts the dtype it loads in


def test_an_encoder_classifier_is_refused_as_a_reward_model_in_one_line(tmp_path):
    """A BERT-style classifier scores its pooled output, not a head at every token: the rm stage's hook and
    RewardModel's per-token read would crash (IndexError) or score something else. Refused when loaded, naming it."""
    from transformers import BertConfig, BertForSequenceClassification

    from testbed.errors import InputError
    from testbed.llm.models import load_reward_model
    cfg = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(InputError) as e:
        load_reward_model({"path": str(tmp_path / "bert")})
    msg = str(e.value)
    assert "\n" not in msg and "BertForSequenceClassification" in msg and "pooled" in msg
