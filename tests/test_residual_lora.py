"""PiSSA and OLoRA (``adapter=pissa``, ``adapter=olora``): what trains, their reference, their export."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import TINY, compose_train, fast_overrides
from tests.test_adapters import batch, changed, make_module, snapshot, steps
from tests.test_dpo import dpo_dir
from tests.test_dpo import make_module as make_dpo_module
from tests.test_dpo import pair_examples
from zhilu.adapters import LoRA
from zhilu.data.collate import PaddedCollator
from zhilu.model import ModelBuilder
from zhilu.objectives import DPO
from zhilu.train.run import train

INITS = {"pissa": "pissa_niter_4", "olora": "olora"}


def residual(init: str, **kw) -> LoRA:
    return LoRA(r=4, dropout=0.0, init_lora_weights=init, **kw)


@pytest.mark.parametrize("init", ["pissa_niter_4", "pissa", "olora"])
def test_residual_inits_train_exactly_a_and_b_and_start_at_the_base(tokenizer, init):
    module = make_module(tokenizer, residual(init))
    original = ModelBuilder(config=TINY, seed=0).build(tokenizer).eval()
    ids = batch(tokenizer)["input_ids"][:1]
    model = module.model.eval()
    with torch.no_grad():
        start, base = model(input_ids=ids).logits, original(input_ids=ids).logits
        with model.disable_adapter():
            residual_only = model(input_ids=ids).logits
    torch.testing.assert_close(start, base, atol=1e-4, rtol=1e-4)  # the starting model is the base ...
    assert (residual_only - base).abs().max() > 1e-2  # ... but the adapter switched off is not
    model.train()
    before = snapshot(model)
    steps(module, tokenizer, 1)  # A and B both start non-zero: both move at the first step
    want = {k for k in before if "lora_A" in k or "lora_B" in k}
    assert len(want) == TINY["num_hidden_layers"] * 7 * 2 and changed(before, model) == want


@pytest.mark.parametrize("name", ["pissa", "olora"])
def test_dpo_at_step_0_gives_log2_and_zero_rewards_with_a_frozen_copy(tokenizer, name):
    module = make_dpo_module(tokenizer, residual(INITS[name]), DPO(beta=0.1))
    assert module.adapter.name == name and module.objective.reference.kind == "copy"
    assert module.objective.ref_model is not None
    module.train()
    loss, logs = module.objective.loss(module, PaddedCollator(tokenizer.pad_token_id)(pair_examples(tokenizer)), "train")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert abs(logs["rewards/chosen"].item()) < 1e-6 and abs(logs["rewards/rejected"].item()) < 1e-6


@pytest.mark.parametrize("name", ["pissa", "olora"])
def test_export_converts_the_adapter_to_a_plain_lora_on_the_original_base(tokenizer, tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module = make_module(tokenizer, residual(INITS[name]))
    steps(module, tokenizer, 3)
    model = module.model.eval()
    ids = batch(tokenizer)["input_ids"][:1]
    with torch.no_grad():
        want = model(input_ids=ids).logits
    module.adapter.export(model, tokenizer, tmp_path / "export")
    adapter_cfg = json.loads((tmp_path / "export" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["init_lora_weights"] is True  # rank 2r, plain LoRA
    assert not (tmp_path / "export" / "adapter_init").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "merged").eval()
    converted = PeftModel.from_pretrained(ModelBuilder(config=TINY, seed=0).build(tokenizer),
                                          tmp_path / "export" / "adapter").eval()
    with torch.no_grad():
        merged_logits, converted_logits = merged(input_ids=ids).logits, converted(input_ids=ids).logits
        torch.testing.assert_close(converted_logits, merged_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(merged_logits, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(input_ids=ids).logits, want, atol=1e-6, rtol=0)  # live model unchanged
    if name == "olora":
        return  # peft re-runs OLoRA's (deterministic) QR on load, so its unconverted adapter also loads right
    # what the export fixed: PiSSA's adapter saved as it is re-runs a randomised SVD on load: another model
    model.save_pretrained(str(tmp_path / "raw"))
    raw = PeftModel.from_pretrained(ModelBuilder(config=TINY, seed=0).build(tokenizer), tmp_path / "raw").eval()
    with torch.no_grad():
        assert (raw(input_ids=ids).logits - want).abs().max() > 1e-2


def test_a_rebuilt_residual_base_is_identical(tokenizer):
    """pissa_niter's randomised SVD is seeded: a resumed run (which restores only A and B) gets the same base."""
    torch.manual_seed(1)
    a = make_module(tokenizer, residual("pissa_niter_2")).model.state_dict()
    torch.manual_seed(2)
    b = make_module(tokenizer, residual("pissa_niter_2")).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pissa", "olora"])
def test_a_run_records_its_adapter_name_and_trains_dpo_from_log2(tmp_path, name):
    import pandas as pd

    d = dpo_dir(tmp_path)
    cfg = compose_train(fast_overrides(d, "objective=dpo", f"adapter={name}", "adapter.r=4", "trainer.max_steps=2",
                                       "callbacks.model_checkpoint=null", "validate_after_fit=false"), tmp_path / "run")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["adapter"] == name and metrics["objective"] == "dpo"
    log = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv").dropna(subset=["train/loss"])
    assert log["train/loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-5)
    assert log["train/rewards/chosen"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "run" / "export" / "adapter" / "adapter_config.json").is_file()
