"""Parity with TRL 1.16 (``pip install -e .[parity]``): the DPO-family losses, on the same log-probs.

TRL's DPO losses are computed inline in ``DPOTrainer._compute_loss``; it is called here on a stand-in
trainer whose "model" returns the per-token log-probs drawn for the test (``precompute_ref_logps`` supplies
the reference), so TRL's own code computes the loss and the logged rewards. SimPO and cDPO's smoothing
come from ``CPOTrainer.cpo_loss``, ORPO's odds-ratio term from ``ORPOTrainer.odds_ratio_loss``. Where this
project's convention differs from TRL's (README, "Preference alignment"), the test pins the difference.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", minversion="1.16")

from zhilu.objectives.dpo import DPO  # noqa: E402

P, T = 6, 12  # pairs, positions per row
BETA = 0.3


def draw(seed: int = 0):
    """Per-token policy and reference log-probs, and completion masks of varied lengths ``[2P, T]``
    (TRL's layout: the P chosen rows, then the P rejected rows)."""
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(2 * P, T - 1, generator=g, dtype=torch.float64) * 3
    ref = -torch.rand(2 * P, T - 1, generator=g, dtype=torch.float64) * 3
    lengths = torch.randint(1, T - 2, (2 * P,), generator=g)
    mask = torch.zeros(2 * P, T, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        mask[i, T - n:] = 1  # the completion ends the row
    return logps, ref, mask


def interleave(x: torch.Tensor) -> torch.Tensor:
    """TRL's [chosen..., rejected...] -> this project's (c0, r0, c1, r1, ...)."""
    return torch.stack(x.chunk(2), dim=1).reshape(-1)


def trl_dpo(loss_type: str, logps, ref, mask) -> tuple[torch.Tensor, dict]:
    from trl import DPOTrainer

    shift = mask[:, 1:].to(logps.dtype)
    ref_sums = (ref * shift).sum(1)

    class Model:
        training = True

        def __call__(self, **kw):
            zeros = torch.zeros_like(logps)
            return SimpleNamespace(log_probs=logps * shift, entropy=zeros, mean_logits=zeros,
                                   is_top1=zeros.bool())

    accel = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    stub = SimpleNamespace(
        model=Model(), accelerator=accel, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=BETA,
        label_smoothing=0.0, use_weighting=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": ref_sums[:P], "ref_rejected_logps": ref_sums[P:]}
    loss = DPOTrainer._compute_loss(stub, stub.model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


def ours(loss_type: str, logps, ref, mask, **kw) -> tuple[torch.Tensor, dict]:
    shift = mask[:, 1:].to(logps.dtype)
    obj = DPO(loss_type=loss_type, beta=BETA, **kw)
    return obj.pair_loss(interleave((logps * shift).sum(1)), interleave(shift.sum(1)), interleave((ref * shift).sum(1)))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_reference_losses_equal_trls(loss_type):
    logps, ref, mask = draw()
    theirs, their_logs = trl_dpo(loss_type, logps, ref, mask)
    mine, logs = ours(loss_type, logps, ref, mask)
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-12, abs=1e-14)
    if loss_type == "ipo":
        # Convention: IPO's rewards and log-probs are logged from the per-token means its loss uses (TRL logs sums)
        shift = mask[:, 1:].to(logps.dtype)
        counts = shift.sum(1)
        sums, ref_sums = (logps * shift).sum(1), (ref * shift).sum(1)
        assert their_logs["rewards/chosen"] == pytest.approx((BETA * (sums - ref_sums))[:P].mean().item(), rel=1e-12)
        assert logs["rewards/chosen"].item() == pytest.approx(
            (BETA * (sums - ref_sums) / counts)[:P].mean().item(), rel=1e-12)
        assert logs["logps/chosen"].item() == pytest.approx((sums / counts)[:P].mean().item(), rel=1e-12)
        assert their_logs["logps/chosen"] == pytest.approx(sums[:P].mean().item(), rel=1e-12)
    else:
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                    "logps/rejected"):
            assert logs[key].item() == pytest.approx(their_logs[key], rel=1e-12, abs=1e-14), key


def cpo_stub(loss_type: str, label_smoothing: float = 0.0, gamma: float = 0.0):
    return SimpleNamespace(loss_type=loss_type, beta=BETA, simpo_gamma=gamma, label_smoothing=label_smoothing,
                           alpha=0.0,
                           accelerator=SimpleNamespace(device=torch.device("cpu")))


def test_conservative_dpo_equals_trls_smoothed_sigmoid():
    """cDPO: TRL's label-smoothed sigmoid (CPO's, fed log-ratios) on the same reference log-ratios."""
    from trl.experimental.cpo import CPOTrainer

    logps, ref, mask = draw(1)
    shift = mask[:, 1:].to(logps.dtype)
    ratios = ((logps - ref) * shift).sum(1)
    losses, _, _ = CPOTrainer.cpo_loss(cpo_stub("sigmoid", label_smoothing=0.2), ratios[:P], ratios[P:])
    mine, _ = ours("sigmoid", logps, ref, mask, label_smoothing=0.2)
    assert mine.item() == pytest.approx(losses.mean().item(), rel=1e-12)


def test_simpo_equals_trls():
    from trl.experimental.cpo import CPOTrainer

    logps, ref, mask = draw(2)
    shift = mask[:, 1:].to(logps.dtype)
    means = (logps * shift).sum(1) / shift.sum(1)  # SimPO scores answers by mean log-prob in both
    losses, chosen_r, _ = CPOTrainer.cpo_loss(cpo_stub("simpo", gamma=0.7), means[:P], means[P:])
    mine, logs = ours("simpo", logps, ref, mask, gamma=0.7)
    assert mine.item() == pytest.approx(losses.mean().item(), rel=1e-12)
    assert logs["rewards/chosen"].item() == pytest.approx(chosen_r.mean().item(), rel=1e-12)


def test_orpo_odds_ratio_term_equals_trls():
    """ORPO: the odds-ratio term equals TRL's; the NLL term differs by convention (see the README): this
    project's covers the chosen answer's tokens (the paper's L_SFT), TRL's the prompt's too."""
    from trl.experimental.orpo import ORPOTrainer

    logps, ref, mask = draw(3)
    shift = mask[:, 1:].to(logps.dtype)
    sums, counts = (logps * shift).sum(1), shift.sum(1)
    stub = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, chosen_r, rejected_r, _, _ = ORPOTrainer.odds_ratio_loss(stub, (sums / counts)[:P], (sums / counts)[P:])
    mine, logs = ours("orpo", logps, ref, mask, sft_weight=0.0)
    # TRL casts ORPO's log-probs to fp32 (this test draws fp64): agreement to fp32 precision
    assert mine.item() == pytest.approx(-losses.mean().item(), rel=1e-6)
    with_nll, logs = ours("orpo", logps, ref, mask)  # sft_weight 1: + the chosen answers' token-mean NLL
    nll = -sums[:P].sum() / counts[:P].sum()
    assert with_nll.item() == pytest.approx(-losses.mean().item() + nll.item(), rel=1e-6)
    assert logs["rewards/chosen"].item() == pytest.approx(chosen_r.mean().item(), rel=1e-6)
