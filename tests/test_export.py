"""Exports in the layout every tool reads: config round trip, dtype, verbatim tokenizer files, peft config.

The second client itself (transformers 4.x and peft 0.1x in a clean venv) runs in tests/test_interop.py (slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import ROOT, TINY
from zhilu.adapters import FullFineTune, LoRA
from zhilu.errors import ConfigError
from zhilu.model import ModelBuilder
from zhilu.model.export import (export_dtype, make_portable, portable_adapter_config, portable_config,
                                save_hf_model, save_tokenizer)

COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
          "chat_template.jinja")


def stored_dtypes(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.mark.parametrize("dtype, name, stored", [(None, "float32", "F32"), (torch.bfloat16, "bfloat16", "BF16")])
def test_config_round_trip_carries_rope_theta_use_cache_and_dtype(tokenizer, tmp_path, dtype, name, stored):
    from transformers import AutoModelForCausalLM

    model = ModelBuilder(config={**TINY, "rope_theta": 123456.0}, seed=0).build(tokenizer)
    assert model.config.use_cache is False  # training turns it off in memory
    save_hf_model(model, tmp_path / "m", tokenizer, dtype=dtype)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 123456.0
    assert "rope_scaling" not in cfg  # default RoPE: nothing for older readers to misapply
    assert cfg["use_cache"] is True and cfg["torch_dtype"] == cfg["dtype"] == name
    assert stored_dtypes(tmp_path / "m") == {stored}
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert back.config.rope_parameters["rope_theta"] == 123456.0 and back.config.use_cache is True
    with torch.no_grad():
        want = {k: v.to(dtype or torch.float32) for k, v in model.state_dict().items()}
        for k, v in back.state_dict().items():
            assert torch.equal(v.to(want[k].dtype), want[k]), k


def test_llama3_rope_scaling_is_written_flat_too():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = portable_config({"rope_parameters": rope, "use_cache": False, "dtype": "float32"}, "bfloat16")
    assert cfg["rope_theta"] == 500000.0
    assert cfg["rope_scaling"] == {"rope_type": "llama3", "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert cfg["rope_parameters"] == rope and cfg["use_cache"] is True and cfg["dtype"] == "bfloat16"


@pytest.fixture
def meta_like_base(tokenizer, tmp_path) -> Path:
    """A base folder in Meta's layout: no pad token, chat template in tokenizer_config.json and a .jinja,
    its own generation config (bytes no transformers version would write)."""
    base = tmp_path / "base"
    model = ModelBuilder(config=TINY, seed=0, dtype="bfloat16").build(tokenizer)
    save_hf_model(model, base, tokenizer)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((base / name).read_text())
        cfg.pop("pad_token")
        (base / name).write_text(json.dumps(cfg, indent=4) + "\n")
    (base / "chat_template.jinja").write_text(tokenizer.chat_template)
    (base / "generation_config.json").write_text('{"bos_token_id": 6144, "eos_token_id": [6145, 6148], '
                                                 '"do_sample": true, "temperature": 0.6, "top_p": 0.9}\n')
    return base


@pytest.mark.parametrize("adapter", [FullFineTune(), LoRA(r=4, use_dora=True)], ids=["full", "dora"])
def test_unchanged_tokenizer_files_are_the_bases_byte_for_byte(meta_like_base, tmp_path, adapter):
    builder = ModelBuilder(path=str(meta_like_base), dtype="float32", seed=0)
    tok = builder.load_tokenizer()
    assert tok.pad_token is not None  # set in memory for batching; must not reach the export
    assert builder.base_dtype() == torch.bfloat16  # stored bf16, trained fp32
    model = adapter.apply(builder.build(tok))
    merged = adapter.export(model, tok, tmp_path / "export", dtype=builder.base_dtype())
    folders = [merged, tmp_path / "export"] + ([tmp_path / "export" / "adapter"] if adapter.name == "dora" else [])
    for folder in folders:
        for name in COPIED:
            if folder.name == "adapter" and name == "generation_config.json":
                continue
            assert (folder / name).read_bytes() == (meta_like_base / name).read_bytes(), (folder, name)
    assert stored_dtypes(merged) == {"BF16"} and json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"


def test_changed_or_v5_only_tokenizers_are_written_in_the_portable_layout(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    # the shipped tokenizer is in transformers 5's own format: the export rewrites its config, not its model
    assert json.loads((Path(tokenizer.name_or_path) / "tokenizer_config.json").read_text())["tokenizer_class"] \
        == "TokenizersBackend"
    assert save_tokenizer(tokenizer, tmp_path / "a") == "portable"
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (Path(tokenizer.name_or_path) / "tokenizer.json").read_bytes()
    changed = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    changed.add_tokens(["<|tool|>"], special_tokens=True)
    assert save_tokenizer(changed, tmp_path / "b") == "written"
    for folder, tok in ((tmp_path / "a", tokenizer), (tmp_path / "b", changed)):
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["chat_template"] == tok.chat_template
        assert json.loads((folder / "special_tokens_map.json").read_text())["eos_token"] == tok.eos_token
        back = AutoTokenizer.from_pretrained(folder)
        assert back.get_vocab() == tok.get_vocab() and back.eos_token == tok.eos_token
        text = "<|begin_of_text|>信用卡 APR 12.5%<|tool|><|eot_id|>"
        assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert "<|tool|>" in AutoTokenizer.from_pretrained(tmp_path / "b").get_vocab()


def test_adapter_config_drops_only_default_fields_and_round_trips(tokenizer, tmp_path):
    from peft import LoraConfig, PeftConfig

    adapter = LoRA(r=4, alpha=8, dropout=0.0, use_rslora=True, use_dora=True)
    model = adapter.apply(ModelBuilder(config=TINY, seed=0).build(tokenizer))
    adapter.export(model, tokenizer, tmp_path / "export")
    saved = json.loads((tmp_path / "export" / "adapter" / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True and saved["use_dora"] is True and saved["r"] == 4  # non-defaults stay
    full = model.peft_config["default"].to_dict()
    dropped = set(full) - set(saved)
    assert dropped and "peft_version" not in saved
    defaults = LoraConfig()
    for key in dropped:  # nothing dropped that a loader would not fill in with the same value
        value = getattr(defaults, key)
        assert full[key] == (value.value if hasattr(value, "value") and not isinstance(value, (int, str)) else value), key
    back = PeftConfig.from_pretrained(str(tmp_path / "export" / "adapter")).to_dict()
    assert {k: v for k, v in back.items() if k != "peft_version"} == \
        {k: v for k, v in full.items() if k != "peft_version"} | {"inference_mode": True}
    assert portable_adapter_config({"peft_type": "NOT_A_TYPE", "x": 1}) == {"peft_type": "NOT_A_TYPE", "x": 1}


def test_merge_output_is_portable(tokenizer, meta_like_base, tmp_path):
    pytest.importorskip("mergekit")
    from zhilu.merge import Linear, merge

    ft = tmp_path / "ft"
    model = ModelBuilder(config=TINY, seed=1, dtype="float32").build(tokenizer)
    save_hf_model(model, ft, tokenizer)
    out = merge(Linear(weight=0.5), [str(ft)], tmp_path / "merged", base=str(meta_like_base))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_theta"] == TINY["rope_theta"] and cfg["use_cache"] is True
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16" and stored_dtypes(out) == {"BF16"}  # the base's dtype
    for name in COPIED:
        assert (out / name).read_bytes() == (meta_like_base / name).read_bytes(), name
    make_portable(out, None)  # idempotent on the config
    assert json.loads((out / "config.json").read_text()) == cfg


def test_bad_export_dtype_is_one_line_before_any_model(tmp_path):
    with pytest.raises(ConfigError, match=r"export.dtype='int8'"):
        export_dtype("int8", torch.float32)
    assert export_dtype(None, torch.bfloat16) == torch.bfloat16 and export_dtype("bf16", torch.float32) == torch.bfloat16
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "export.dtype=int8", "logger=csv",
                        f"hydra.run.dir={tmp_path}/r"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: export.dtype='int8': expected null")
