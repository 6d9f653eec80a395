"""The warmup convention (zhilu.train.schedule docstring): step k of a w-step warmup trains at lr (k+1)/w."""

import pytest
import torch

from zhilu.train.schedule import warmup_schedule


def lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_first_warmup_step_trains_at_lr_over_warmup_where_hf_starts_at_zero():
    from transformers import get_linear_schedule_with_warmup

    def opt():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.8)

    ours = lrs(warmup_schedule(opt(), total_steps=8, kind="linear", warmup_steps=4, min_lr_ratio=0.0), 8)
    hf = lrs(get_linear_schedule_with_warmup(opt(), num_warmup_steps=4, num_training_steps=8), 8)
    assert ours[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # 0.8 * (k + 1) / 4
    assert hf[:4] == pytest.approx([0.0, 0.2, 0.4, 0.6])  # 0.8 * k / 4: the first step moves nothing
    assert ours[4:] == pytest.approx(hf[4:])  # the same decay after warmup
    assert hf[4:] == pytest.approx([0.8, 0.6, 0.4, 0.2])
