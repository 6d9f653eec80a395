"""The reference policy module and what adapters and objectives state about it."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from tests.conftest import TINY, compose_train, fast_overrides
from tests.test_dpo import PAIRS, dpo_dir, make_module, pair_examples
from zhilu.adapters import BAdam, FullFineTune, LoRA
from zhilu.data.collate import PaddedCollator
from zhilu.errors import ConfigError
from zhilu.model import ModelBuilder
from zhilu.objectives import DPO, SFT, Objective
from zhilu.objectives import reference
from zhilu.objectives.logps import base_causal_lm, label_logps
from zhilu.objectives.reference import ReferencePolicy
from zhilu.train.run import build


def test_objectives_declare_data_kind_and_reference():
    assert (SFT().data_kind, SFT().needs_reference, SFT().precompute_ref) == ("sft", False, False)
    dpo = DPO()
    assert (dpo.data_kind, dpo.needs_reference, dpo.precompute_ref, dpo.name) == ("preference", True, False, "dpo")
    assert DPO(precompute_ref=True).precompute_ref
    for free in ("simpo", "orpo"):  # reference-free losses need none, and precompute nothing
        assert not DPO(loss_type=free).needs_reference and not DPO(loss_type=free, precompute_ref=True).precompute_ref


def test_adapters_state_name_and_abilities():
    stated = {a.name: (a.reference, a.shardable, a.adapter_on_base) for a in [
        LoRA(), LoRA(use_dora=True), FullFineTune(), BAdam(), LoRA(init_lora_weights="pissa_niter_2"),
        LoRA(init_lora_weights="olora"), LoRA(name="my_lora", init_lora_weights="gaussian")]}
    assert stated == {"lora": ("disabled", True, True), "dora": ("disabled", True, True),
                      "full": ("copy", True, None), "badam": ("copy", False, None),
                      "pissa": ("copy", True, False), "olora": ("copy", True, False),
                      "my_lora": ("disabled", True, True)}
    assert FullFineTune(reference="precomputed").reference == "precomputed"
    assert LoRA(init_lora_weights="pissa", reference="precomputed").reference == "precomputed"


@pytest.mark.parametrize("make, match", [
    # what `adapter=lora adapter.init_lora_weights=pissa` states (lora.yaml says reference: disabled)
    (lambda: LoRA(init_lora_weights="pissa", name="lora", reference="disabled"), r"^adapter.reference=disabled: adapter=lora can give only copy or "
     r"precomputed \(init_lora_weights=pissa leaves the residual in the base"),
    (lambda: FullFineTune(reference="disabled"), r"^adapter.reference=disabled: adapter=full can give only copy or "
     r"precomputed \(it trains the base weights"),
    (lambda: FullFineTune(reference="frozen"), r"^adapter.reference='frozen': expected one of disabled, copy, "
     r"precomputed$"),
    (lambda: BAdam(shardable=True), r"^adapter.shardable=true: adapter=badam cannot be sharded \(BAdam switches"),
    (lambda: LoRA(init_lora_weights="olora", adapter_on_base=True), r"^adapter.adapter_on_base=True: adapter=olora "
     r"trains on a changed base"),
    (lambda: LoRA(init_lora_weights="loftq"), r"^adapter.init_lora_weights='loftq': expected true, false, gaussian"),
    (lambda: LoRA(init_lora_weights="pissa", use_dora=True), r"^adapter.use_dora=true with init_lora_weights=pissa"),
])
def test_impossible_statements_are_refused_in_one_line(make, match):
    with pytest.raises(ConfigError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_check_reads_the_statements():
    full_pre = FullFineTune(reference="precomputed")
    with pytest.raises(ConfigError, match=r"^objective=dpo with adapter=full: the adapter's reference can only be "
                                          r"precomputed \(adapter.reference=precomputed\); set "
                                          r"objective.precompute_ref=true$"):
        reference.check(full_pre, DPO())
    reference.check(full_pre, DPO(precompute_ref=True))
    reference.check(full_pre, DPO(loss_type="simpo"))  # reference-free
    reference.check(full_pre, SFT())
    pissa = LoRA(init_lora_weights="pissa")
    with pytest.raises(ConfigError, match=r"^objective=dpo with adapter=pissa needs a frozen copy"):
        reference.check(pissa, DPO(), engine="fsdp", sharded=True)
    with pytest.raises(ConfigError, match=r"adapter.reference=precomputed scores the data with the unsharded"):
        reference.check(full_pre, DPO(precompute_ref=True), engine="fsdp", sharded=True)
    reference.check(LoRA(), DPO(), engine="fsdp", sharded=True)


@pytest.mark.parametrize("adapter, kind, calls", [
    (LoRA(r=4), "disabled", 2), (FullFineTune(), "copy", 1), (LoRA(r=4, dropout=0.0, init_lora_weights="olora"), "copy", 1)],
    ids=["lora", "full", "olora"])
def test_online_sources(tokenizer, adapter, kind, calls):
    module = make_module(tokenizer, adapter, DPO())
    ref = module.objective.reference
    assert ref.kind == kind and (ref.model is not None) == (kind == "copy")
    seen = []  # passes through the policy's own decoder
    base_causal_lm(module.model).model.register_forward_pre_hook(lambda m, a: seen.append("policy"))
    batch = PaddedCollator(tokenizer.pad_token_id)(pair_examples(tokenizer))
    sums, counts = ref(module, batch, "train")
    policy = label_logps(module.model, batch)
    assert torch.equal(counts, policy.seq_counts) and not sums.requires_grad
    torch.testing.assert_close(sums, policy.seq_logps.detach(), atol=1e-4, rtol=1e-5)  # step 0: policy = reference
    assert len(seen) == calls  # the disabled adapter runs the policy's own network, a copy its own


class RefGap(Objective):
    """A one-sequence objective on SFT data that uses the reference module: mean (policy - reference) log-prob."""

    data_kind = "sft"
    needs_reference = True

    def __init__(self, precompute_ref: bool = False) -> None:
        self.precompute_ref = precompute_ref
        self.reference = None

    def score(self, model, batch):
        lp = label_logps(model, batch)
        return lp.seq_logps, lp.seq_counts

    def setup(self, module) -> None:
        self.reference = ReferencePolicy(module.adapter.reference, self.score, precompute=self.precompute_ref)
        self.reference.setup(module)

    def on_fit_start(self, module) -> None:
        self.reference.on_fit_start(module)

    def loss(self, module, batch, stage):
        ref, _ = self.reference(module, batch, stage)
        sums, counts = self.score(module.model, batch)
        gap = ((ref - sums) / counts.clamp(min=1)).mean()
        return gap, {"loss": gap.detach()}


class Losses(L.Callback):
    def __init__(self) -> None:
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(module, dm, root, steps=2):
    rec = Losses()
    trainer = L.Trainer(max_steps=steps, default_root_dir=str(root), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu", devices=1, callbacks=[rec])
    trainer.fit(module, datamodule=dm)
    return rec.losses


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_any_objective_can_use_the_reference_and_precompute_one_sequence_examples(tmp_path, sft_dir, adapter):
    L.seed_everything(0)
    objs = build(compose_train(fast_overrides(sft_dir, f"adapter={adapter}", "optimizer.lr=1e-2"), tmp_path / "a"))
    module, dm = objs["module"], objs["datamodule"]
    module.objective = RefGap(precompute_ref=True)
    losses = fit(module, dm, tmp_path / "a")
    assert losses[0] == pytest.approx(0.0, abs=1e-5) and losses[1] != pytest.approx(0.0, abs=1e-4)
    table = module.objective.reference.table
    assert table["train"]["sums"].shape == (len(dm.train_examples), 1) and module.objective.reference.model is None


def test_precomputed_reference_is_the_policy_before_its_first_step(tmp_path):
    """adapter.reference=precomputed: no copy at any time, and the same losses as a frozen copy's."""
    d = dpo_dir(tmp_path, train=PAIRS, val=PAIRS[:2])
    base = fast_overrides(d, "objective=dpo", "adapter=full", "data.batch_size=2", "optimizer.lr=1e-2",
                          "objective.precompute_ref=true")
    runs = {}
    for kind in ("copy", "precomputed"):
        L.seed_everything(0)
        objs = build(compose_train(base + [f"adapter.reference={kind}"], tmp_path / kind))
        module = objs["module"]
        module.configure_model()
        assert (module.objective.ref_model is None) == (kind == "precomputed")
        runs[kind] = fit(module, objs["datamodule"], tmp_path / kind, steps=3)
    assert runs["precomputed"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert runs["precomputed"] == pytest.approx(runs["copy"], rel=1e-5)
    # without precompute_ref, that adapter is refused at config time
    with pytest.raises(ConfigError, match="set objective.precompute_ref=true"):
        build(compose_train(fast_overrides(d, "objective=dpo", "adapter=full", "adapter.reference=precomputed"),
                            tmp_path / "x"))


def test_a_resumed_precomputed_reference_without_its_cache_is_refused(tmp_path, tokenizer):
    module = make_module(tokenizer, FullFineTune(reference="precomputed"), DPO(precompute_ref=True))

    class Trainer:  # what _precompute reads of a trainer that restored a checkpoint
        datamodule = type("DM", (), {"train_examples": pair_examples(tokenizer), "val_examples": []})()
        default_root_dir = str(tmp_path)
        ckpt_path = str(tmp_path / "last.ckpt")

    module._trainer = Trainer()
    with pytest.raises(ConfigError, match=r"^adapter.reference=precomputed: resuming from \S+last.ckpt without the "
                                          r"first start's \S+ref_logps.pt"):
        module.objective.reference._precompute(module)


def test_the_cache_key_names_the_base_model_and_the_adapters_reference():
    ident = reference.reference_identity(ModelBuilder(config=TINY, seed=0), LoRA())
    assert ident["adapter"] == ("lora", "disabled") and ident["config"]["hidden_size"] == TINY["hidden_size"]
