"""Per-token log-probabilities of the labels, computed only where there are labels.

Objectives never ask the model for a ``[B, T, vocab]`` logits tensor: they run the decoder,
keep the hidden states at labelled positions, and apply the LM head there, optionally fused
with the cross-entropy in chunks (so long sequences with a 128k vocabulary never hold every
logit in memory). The sequence sums are taken with ``sequence_index``, so the same code serves
padded and packed batches.

Packed batches (several documents per row, ``position_ids`` restarting at 0 at each document,
no ``attention_mask``) are fed in the layout the attention backend can keep contamination-free:

- mask backends (``sdpa``, ``eager``, ``flex_attention``): rows ``[B, T]``; transformers derives
  the block-diagonal causal mask from the restarting ``position_ids``
  (``transformers.masking_utils.find_packed_sequence_indices``).
- FlashAttention (2/3/4, or a hub kernel) and zhilu's ``sdpa_varlen`` (:mod:`zhilu.model.attention`,
  the CPU default): padding-free, every real token of the batch in one row ``[1, N]`` with the
  documents' ``cu_seqlens`` handed to the variable-length kernel (Dao 2023,
  https://arxiv.org/abs/2307.08691; padding-free packing with FA2:
  https://huggingface.co/blog/packing-with-FA2). Transformers reads document boundaries from
  ``position_ids`` for FlashAttention only when the batch has one row, so rows are flattened here.

Any other backend gets a :class:`~zhilu.errors.ConfigError` rather than silent cross-document
attention. Fused linear + cross-entropy: ``chunked`` (written here: checkpointed chunks of the LM
head, recomputed in the backward pass) or ``liger`` (Liger-Kernel, Hsu et al. 2024,
https://arxiv.org/abs/2410.10989), checked once for correct per-token gradients.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from zhilu.data.encode import IGNORE_INDEX
from zhilu.errors import ConfigError
from zhilu.model.runtime import base_causal_lm  # noqa: F401 - also imported from here by callers

LOSS_IMPLS = ("auto", "torch", "chunked", "liger")


# ----------------------------------------------------------------------------- decoder layouts
@dataclass
class DecoderView:
    """Decoder output with the labels and sequence ids laid out like it (``[R, L]``)."""

    hidden: torch.Tensor  # [R, L, H]
    labels: torch.Tensor  # [R, L]
    seq: torch.Tensor  # [R, L], -1 = padding


def is_packed(batch: dict) -> bool:
    """Packed batches carry no ``attention_mask``: boundaries live in ``position_ids``."""
    return batch.get("attention_mask") is None


def rows_forward(lm, batch: dict) -> DecoderView:
    """The batch as it is; a packed one relies on the mask built from ``position_ids``."""
    out = lm.model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return DecoderView(out.last_hidden_state, batch["labels"], batch["sequence_index"])


def varlen_kwargs(seq: torch.Tensor) -> dict:
    """``cu_seq_lens_*`` / ``max_length_*`` for documents laid end to end (``seq``: flat ids)."""
    n = seq.numel()
    starts = torch.ones(n, dtype=torch.bool, device=seq.device)
    starts[1:] = seq[1:] != seq[:-1]
    cu = torch.cat([starts.nonzero().flatten(), torch.tensor([n], device=seq.device)]).to(torch.int32)
    max_len = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_len, "max_length_k": max_len}


def flat_forward(lm, batch: dict) -> DecoderView:
    """Padding-free: the real tokens of all rows as one row, documents given as ``cu_seqlens``."""
    keep = batch["sequence_index"] >= 0
    seq = batch["sequence_index"][keep]
    out = lm.model(
        input_ids=batch["input_ids"][keep][None],
        position_ids=batch["position_ids"][keep][None],
        use_cache=False,
        **varlen_kwargs(seq),
    )
    return DecoderView(out.last_hidden_state, batch["labels"][keep][None], seq[None])


def packed_layout(config) -> Callable[..., DecoderView]:
    """How a packed batch must be fed to ``config._attn_implementation`` to stay contamination-free."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.utils.generic import is_flash_attention_requested

    from zhilu.model.attention import VARLEN_BACKENDS

    impl = config._attn_implementation
    if impl in VARLEN_BACKENDS or is_flash_attention_requested(config):
        return flat_forward
    if impl in ALL_MASK_ATTENTION_FUNCTIONS:
        return rows_forward
    raise ConfigError(
        f"attention backend {impl!r} cannot mask packed documents from each other: "
        "use model.attn_implementation=sdpa_varlen|sdpa|eager|flex_attention|flash_attention_2, "
        "or data.packing=false"
    )


def decoder_view(model, batch: dict) -> DecoderView:
    lm = base_causal_lm(model)
    forward = packed_layout(lm.config) if is_packed(batch) else rows_forward
    return forward(lm, batch)


def decoder_hidden(model, batch: dict) -> torch.Tensor:
    """Last hidden states ``[B, T, H]`` in the batch's own layout (padding positions zero when flattened)."""
    view = decoder_view(model, batch)
    if view.hidden.shape[:2] == batch["input_ids"].shape:
        return view.hidden
    keep = batch["sequence_index"] >= 0
    out = view.hidden.new_zeros(*batch["input_ids"].shape, view.hidden.shape[-1])
    out[keep] = view.hidden[0]
    return out


# ------------------------------------------------------------------------------- LM head + CE
@dataclass
class LabelLogps:
    """Log-probs of labelled tokens, flat, with their sequence ids; plus per-sequence sums/counts."""

    token_logps: torch.Tensor  # [N]
    token_seq: torch.Tensor  # [N]
    seq_logps: torch.Tensor  # [S] sum over the sequence's labelled tokens
    seq_counts: torch.Tensor  # [S]

    @property
    def seq_mean_logps(self) -> torch.Tensor:
        return self.seq_logps / self.seq_counts.clamp(min=1)


def _head_logps(head, h: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    logits = head(h).float()
    return -F.cross_entropy(logits, tgt, reduction="none")


def torch_logps(head, h: torch.Tensor, t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Plain: ``[N, vocab]`` logits at once."""
    return _head_logps(head, h, t)


def chunked_logps(head, h: torch.Tensor, t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """LM head + cross-entropy ``chunk_size`` tokens at a time; logits recomputed in backward."""
    if h.shape[0] <= chunk_size:
        return _head_logps(head, h, t)
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        hs, ts = h[s : s + chunk_size], t[s : s + chunk_size]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_head_logps, head, hs, ts, use_reentrant=False))
        else:
            parts.append(_head_logps(head, hs, ts))
    return torch.cat(parts)


def liger_logps(head, h: torch.Tensor, t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Liger-Kernel's fused linear cross-entropy (CUDA), per token."""
    fn = _liger_function()
    if getattr(head, "bias", None) is not None or type(head) is not torch.nn.Linear:
        raise ConfigError("objective.loss_impl=liger needs a plain nn.Linear LM head (no adapter on lm_head)")
    if not h.is_cuda:
        raise ConfigError("objective.loss_impl=liger runs on CUDA only: use chunked or torch on CPU")
    _check_liger_gradients(fn, h.device)
    return -_liger_loss(fn, h, head.weight, t).float()


def _liger_function():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        raise ConfigError(
            "objective.loss_impl=liger needs liger-kernel (CUDA): pip install -r requirements-gpu.txt"
        ) from None
    return liger_fused_linear_cross_entropy


def _liger_loss(fn, h, w, t) -> torch.Tensor:
    out = fn(h, w, t, reduction="none")
    return out[0] if isinstance(out, tuple) else getattr(out, "loss", out)


@functools.cache
def _check_liger_gradients(fn, device: torch.device) -> None:
    """Per-token losses get non-uniform upstream gradients (DPO); some liger releases get those wrong."""
    with torch.enable_grad():
        _compare_liger_gradients(fn, device)


def _compare_liger_gradients(fn, device: torch.device) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(24, 32, device=device, dtype=torch.float32, generator=g).requires_grad_()
    w = torch.randn(80, 32, device=device, dtype=torch.float32, generator=g).requires_grad_()
    t = torch.randint(0, 80, (24,), device=device, generator=g)
    go = torch.randn(24, device=device, dtype=torch.float32, generator=g)
    (_liger_loss(fn, h, w, t) * go).sum().backward()
    got = (h.grad, w.grad)
    h.grad = w.grad = None
    (F.cross_entropy(h @ w.T, t, reduction="none") * go).sum().backward()
    if not all(torch.allclose(a, b, atol=1e-3, rtol=1e-3) for a, b in zip(got, (h.grad, w.grad))):
        from importlib.metadata import version

        raise ConfigError(
            f"liger-kernel {version('liger-kernel')} returns wrong gradients for per-token losses "
            "(reduction='none', linkedin/Liger-Kernel#1298): upgrade it, or use objective.loss_impl=chunked"
        )


HEAD_IMPLS: dict[str, Callable[..., torch.Tensor]] = {
    "torch": torch_logps,
    "chunked": chunked_logps,
    "liger": liger_logps,
}


def label_logps(model, batch: dict, impl: str = "auto", chunk_size: int = 2048) -> LabelLogps:
    """Log-probs of every label given the tokens before it in its own sequence.

    ``impl``: ``torch`` (plain), ``chunked`` (fused in chunks of ``chunk_size`` tokens), ``liger``,
    or ``auto`` (chunked on CUDA, plain on CPU). A label is never predicted across a sequence
    boundary: a target token whose ``sequence_index`` differs from its predecessor's is skipped.
    """
    if impl not in LOSS_IMPLS:
        raise ConfigError(f"objective.loss_impl={impl!r}: expected one of {', '.join(LOSS_IMPLS)}")
    view = decoder_view(model, batch)
    tgt = view.labels[:, 1:]
    seq = view.seq[:, :-1]
    mask = (tgt != IGNORE_INDEX) & (view.seq[:, 1:] == seq) & (seq >= 0)
    h = view.hidden[:, :-1][mask]
    t = tgt[mask]
    seq = seq[mask]
    if impl == "auto":
        impl = "chunked" if h.is_cuda else "torch"
    logps = HEAD_IMPLS[impl](base_causal_lm(model).lm_head, h, t, chunk_size)
    S = int(batch["num_sequences"])
    sums = torch.zeros(S, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)
    counts = torch.zeros(S, dtype=logps.dtype, device=logps.device).index_add(0, seq, torch.ones_like(logps))
    return LabelLogps(logps, seq, sums, counts)
