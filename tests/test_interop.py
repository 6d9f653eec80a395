"""A second, real client reads the exports as transformers 5 does: transformers 4.x + peft 0.1x in a clean venv.

``python -m pytest -m slow tests/test_interop.py``. The venv (no system site-packages, so nothing of
transformers 5 leaks in) is built once with pip and cached in ``$ZHILU_INTEROP_VENV`` (default
``~/.cache/zhilu/interop-tf4``, outside the repository); it needs the package index the first time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT
from zhilu.adapters import LoRA
from zhilu.model import ModelBuilder
from zhilu.model.chat_template import DEFAULT_SYSTEM_PROMPT
from zhilu.model.export import save_hf_model

pytestmark = pytest.mark.slow

#: the second client: the last transformers 4 release line, with the tokenizers/peft it was released with
VENV_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "transformers>=4.40,<5", "tokenizers<0.23",
                     "peft>=0.10,<0.18", "safetensors", "gguf", "numpy"]
CLIENT = ROOT / "tests" / "helpers" / "interop_client.py"
TEXTS = ["信用卡的免息期是怎么计算的？", "APR 12.5% vs 18%:\n\n  monthly  rate", "<|eot_id|>逾期 5 年<|end_of_text|>",
         "   leading spaces and 🙂 emoji", ""]
MESSAGES = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": "什么是年化利率？"},
            {"role": "assistant", "content": "年化利率是按一年计算的利率。"}, {"role": "user", "content": "How about APR?"}]


@pytest.fixture(scope="module")
def venv_python() -> Path:
    venv = Path(os.environ.get("ZHILU_INTEROP_VENV", Path.home() / ".cache" / "zhilu" / "interop-tf4"))
    py = venv / "bin" / "python"
    marker = venv / "zhilu-requirements.txt"
    wanted = "\n".join(VENV_REQUIREMENTS) + "\n"
    if not (py.is_file() and marker.is_file() and marker.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *VENV_REQUIREMENTS], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot build the transformers 4 venv (no package index?): {r.stderr.strip()[-300:]}")
        marker.write_text(wanted)
    return py


def run_client(py: Path, **request) -> dict:
    r = subprocess.run([str(py), str(CLIENT)], input=json.dumps(request), capture_output=True, text=True,
                       timeout=600, env={**os.environ, "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The embedded default (conf/model/llama3_tiny.yaml) with a DoRA adapter that changes its function."""
    tmp = tmp_path_factory.mktemp("interop")
    cfg = yaml.safe_load((ROOT / "conf" / "model" / "llama3_tiny.yaml").read_text())
    builder = ModelBuilder(config=cfg["config"], seed=0, dtype="float32", attn_implementation="sdpa")
    tok = builder.load_tokenizer()
    base = builder.build(tok)
    save_hf_model(base, tmp / "base", tok)
    adapter = LoRA(r=8, use_dora=True)
    model = adapter.apply(base)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval()
    adapter.export(model, tok, tmp / "export")
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = ids["input_ids"] if isinstance(ids, dict) else ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
        with adapter.disabled(model):
            base_logits = model(input_ids=torch.tensor([ids])).logits
    assert (logits - base_logits).abs().max() > 1e-2  # the adapter matters
    return {"tmp": tmp, "tok": tok, "ids": [ids], "logits": logits, "config": cfg["config"]}


def test_transformers4_reads_the_export_as_transformers5_does(venv_python, exported):
    tok = exported["tok"]
    got = run_client(venv_python, model=str(exported["tmp"] / "export" / "merged"), ids=exported["ids"],
                     texts=TEXTS, messages=MESSAGES)
    assert got["transformers"].startswith("4.") and str(venv_python.parent.parent) in got["transformers_file"]
    assert got["rope_theta"] == exported["config"]["rope_theta"] == 500000.0 and got["rope_scaling"] is None
    torch.testing.assert_close(torch.tensor(got["logits"]), exported["logits"], atol=1e-5, rtol=0)
    assert got["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert got["ids"] == [tok(t)["input_ids"] for t in TEXTS]
    assert got["decoded"] == [tok.decode(tok(t)["input_ids"]) for t in TEXTS]
    assert got["chat"] == tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert got["specials"] == {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token}
    # gguf's reader of the tokenizer files (what llama.cpp's converter embeds): the same ids and template
    ids = got["gguf"]["special_token_ids"]
    assert ids["bos"] == tok.bos_token_id and ids["eos"] == tok.eos_token_id and ids["pad"] == tok.pad_token_id
    assert got["gguf"]["chat_template"] == tok.chat_template


def test_peft_01x_loads_the_adapter_export(venv_python, exported):
    got = run_client(venv_python, model=str(exported["tmp"] / "base"), adapter=str(exported["tmp"] / "export" / "adapter"),
                     ids=exported["ids"], texts=TEXTS[:2])
    assert got["peft"].startswith("0.1")
    # peft < 0.18 warns about (0.10-0.13: rejects) fields it does not know; the export writes none of them
    assert not [w for w in got["peft_warnings"] if "Unexpected keyword" in w], got["peft_warnings"]
    torch.testing.assert_close(torch.tensor(got["logits"]), exported["logits"], atol=1e-5, rtol=0)
    assert got["ids"] == [exported["tok"](t)["input_ids"] for t in TEXTS[:2]]
