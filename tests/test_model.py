"""The tiny Llama-3, and the `model.path` loading path it shares with real weights."""

import json

import pytest
import torch

from tests.conftest import TINY
from zhilu.errors import ConfigError, ModelPathError
from zhilu.model import ModelBuilder, resolve_model_path


def test_tiny_model_is_llama3_shaped_and_seeded(tokenizer):
    a = ModelBuilder(config=TINY, seed=3).build(tokenizer)
    b = ModelBuilder(config=TINY, seed=3).build(tokenizer)
    c = ModelBuilder(config=TINY, seed=4).build(tokenizer)
    cfg = a.config
    assert cfg.model_type == "llama" and cfg.rope_parameters["rope_theta"] == 500000.0
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.hidden_act == "silu" and not cfg.tie_word_embeddings
    assert a.lm_head.weight.data_ptr() != a.model.embed_tokens.weight.data_ptr()
    assert cfg.vocab_size == len(tokenizer)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_model_path_round_trip(tokenizer, tmp_path):
    model = ModelBuilder(config=TINY, seed=1).build(tokenizer).eval()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded = ModelBuilder(path=str(tmp_path / "m"), dtype="float32")
    tok2 = loaded.load_tokenizer()
    m2 = loaded.build(tok2).eval()
    ids = torch.tensor([tokenizer.encode("信用卡年费是多少？")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, m2(ids).logits)
    assert tok2.encode("信用卡年费是多少？") == tokenizer.encode("信用卡年费是多少？")
    # a run dir or export dir resolves to export/merged
    (tmp_path / "run" / "export").mkdir(parents=True)
    (tmp_path / "m").rename(tmp_path / "run" / "export" / "merged")
    assert resolve_model_path(tmp_path / "run") == tmp_path / "run" / "export" / "merged"


def test_bad_model_paths_have_one_line_errors(tmp_path):
    with pytest.raises(ModelPathError, match=r"model.path=.*missing: no such directory"):
        ModelBuilder(path=str(tmp_path / "missing")).build()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPathError, match="not a Hugging Face model folder"):
        ModelBuilder(path=str(tmp_path / "empty")).load_tokenizer()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ModelPathError, match="config.json is not valid JSON"):
        resolve_model_path(tmp_path / "broken")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelPathError, match="cannot load weights"):
        ModelBuilder(path=str(tmp_path / "noweights")).build()


def test_unknown_config_values_are_named():
    with pytest.raises(ConfigError, match="model.attn_implementation='flash'"):
        ModelBuilder(config=TINY, attn_implementation="flash")
    with pytest.raises(ConfigError, match="model.dtype='float8'"):
        ModelBuilder(config=TINY, dtype="float8")
