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
attention. LM head + cross-entropy: ``torch`` (plain: ``[N, vocab]`` fp32 logits kept for backward),
``chunked`` (the default; written here, :class:`ChunkedHeadLogps`: chunks sized by
``objective.logits_budget_mb``, nothing vocabulary-sized kept for backward, no recomputation when the
LM head is frozen) or ``liger`` (Liger-Kernel, Hsu et al. 2024, https://arxiv.org/abs/2410.10989),
checked once for correct per-token gradients. The chunked loss follows the idea of Wijmans et al. 2024,
"Cut Your Losses in Large-Vocabulary Language Models", https://arxiv.org/abs/2411.09009.
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
#: ``objective.logits_budget_mb``: one LM-head chunk's fp32 logits (128 tokens at Llama-3's 128,256 vocabulary,
#: 2,728 at the embedded default's 6,150); the step's extra peak is about twice this (logits + log-softmax)
DEFAULT_LOGITS_BUDGET_MB = 64.0


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
    """Plain: ``[N, vocab]`` logits at once (autograd keeps them, in fp32, for the backward pass)."""
    return _head_logps(head, h, t)


def budget_chunk(vocab_size: int, logits_budget_mb: float) -> int:
    """Tokens per LM-head chunk so one chunk's fp32 logits take ``logits_budget_mb`` MiB (at least 1)."""
    if not logits_budget_mb > 0:
        raise ConfigError(f"objective.logits_budget_mb={logits_budget_mb}: must be positive")
    return max(1, int(logits_budget_mb * 2**20 // (vocab_size * 4)))


class ChunkedHeadLogps(torch.autograd.Function):
    """``log_softmax(h W^T + b)[target]`` a chunk of tokens at a time; no ``[N, vocab]`` tensor is kept.

    ``d logp / d logits = onehot(target) - softmax``. When only ``h`` needs a gradient (the LM head
    frozen, as under LoRA/DoRA), the forward pass multiplies that by ``W`` chunk by chunk and keeps
    ``D = (onehot - softmax) W`` ([N, hidden], cast to the head's dtype before the product, as the
    plain path's backward does); the backward is then ``g * D``, with no second pass over the
    vocabulary. When ``W`` (or ``b``) trains, the forward keeps only ``h`` and each token's
    log-sum-exp, and the backward recomputes each chunk's logits once.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, target, chunk: int, need_h: bool, need_w: bool):
        n = h.shape[0]
        logps = torch.empty(n, dtype=torch.float32, device=h.device)
        lse = torch.empty(n, dtype=torch.float32, device=h.device) if need_w else None
        dlogp_dh = torch.empty_like(h) if need_h and not need_w else None
        rows = torch.arange(min(chunk, n), device=h.device)
        for s in range(0, n, chunk):
            logits = F.linear(h[s : s + chunk], weight, bias).float()
            t_c = target[s : s + chunk]
            nll = F.cross_entropy(logits, t_c, reduction="none")  # the plain path's kernel, row by row
            logps[s : s + chunk] = -nll
            lse_c = logits.gather(1, t_c[:, None]).squeeze(1) + nll
            if lse is not None:
                lse[s : s + chunk] = lse_c
            if dlogp_dh is not None:
                d_logits = logits.sub_(lse_c[:, None]).exp_().neg_()  # -softmax, in place
                d_logits[rows[: t_c.shape[0]], t_c] += 1.0
                dlogp_dh[s : s + chunk] = d_logits.to(weight.dtype) @ weight
            del logits
        ctx.chunk = chunk
        ctx.save_for_backward(h if need_w else None, weight if need_w else None, bias if need_w else None,
                              target if need_w else None, lse, dlogp_dh)
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        h, weight, bias, target, lse, dlogp_dh = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = grad_logps.float()
        if dlogp_dh is not None:  # head frozen: everything was done in the forward pass
            return (g[:, None] * dlogp_dh).to(dlogp_dh.dtype) if need_h else None, None, None, None, None, None, None
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        rows = torch.arange(min(ctx.chunk, h.shape[0]), device=h.device)
        for s in range(0, h.shape[0], ctx.chunk):
            h_c, t_c, g_c = h[s : s + ctx.chunk], target[s : s + ctx.chunk], g[s : s + ctx.chunk]
            grad_logits = F.linear(h_c, weight, bias).float().sub_(lse[s : s + ctx.chunk, None]).exp_()
            grad_logits.mul_(-g_c[:, None])
            grad_logits[rows[: h_c.shape[0]], t_c] += g_c
            grad_logits = grad_logits.to(weight.dtype)
            if need_h:
                grad_h[s : s + ctx.chunk] = grad_logits @ weight
            if need_w:
                grad_w += (grad_logits.t() @ h_c).float()
            if need_b:
                grad_b += grad_logits.float().sum(0)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def _plain_linear(head) -> bool:
    """A plain ``nn.Linear`` whose weight is a real tensor here (not a ZeRO-3 partition, no wrapper)."""
    return type(head) is torch.nn.Linear and not hasattr(head.weight, "ds_id")


def chunked_logps(head, h: torch.Tensor, t: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """LM head + cross-entropy ``chunk_size`` tokens at a time, whatever the number of tokens.

    A plain linear head goes through :class:`ChunkedHeadLogps`; any other head module (an adapter on
    ``lm_head``, a ZeRO-3 partitioned weight that only the module's hooks gather) is run chunk by chunk
    under activation checkpointing, its logits recomputed in the backward pass.
    """
    grad = torch.is_grad_enabled()
    if _plain_linear(head):
        need_h = grad and h.requires_grad
        need_w = grad and (head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad))
        return ChunkedHeadLogps.apply(h, head.weight, head.bias, t, chunk_size, need_h, need_w)
    parts = []
    for s in range(0, h.shape[0], chunk_size):
        hs, ts = h[s : s + chunk_size], t[s : s + chunk_size]
        parts.append(checkpoint(_head_logps, head, hs, ts, use_reentrant=False) if grad else _head_logps(head, hs, ts))
    return torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)


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


def labelled_hidden(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states ``[N, H]`` that predict the batch's ``N`` labels, the labels ``[N]`` and their
    sequence ids ``[N]`` (a label is never predicted across a sequence boundary)."""
    view = decoder_view(model, batch)
    tgt = view.labels[:, 1:]
    seq = view.seq[:, :-1]
    mask = (tgt != IGNORE_INDEX) & (view.seq[:, 1:] == seq) & (seq >= 0)
    return view.hidden[:, :-1][mask], tgt[mask], seq[mask]


def label_logps(model, batch: dict, impl: str = "auto", chunk_size: int | None = None,
                logits_budget_mb: float = DEFAULT_LOGITS_BUDGET_MB) -> LabelLogps:
    """Log-probs of every label given the tokens before it in its own sequence.

    ``impl``: ``torch`` (plain), ``chunked`` (LM head + cross-entropy in chunks whose fp32 logits take
    ``logits_budget_mb`` MiB, or ``chunk_size`` tokens when given), ``liger``, or ``auto`` (= ``chunked``,
    on CPU and CUDA). A label is never predicted across a sequence boundary: a target token whose
    ``sequence_index`` differs from its predecessor's is skipped.
    """
    if impl not in LOSS_IMPLS:
        raise ConfigError(f"objective.loss_impl={impl!r}: expected one of {', '.join(LOSS_IMPLS)}")
    h, t, seq = labelled_hidden(model, batch)
    if impl == "auto":
        impl = "chunked"
    lm = base_causal_lm(model)
    head = lm.lm_head
    if chunk_size is None:
        chunk_size = budget_chunk(getattr(lm.config, "vocab_size", None) or head.weight.shape[0], logits_budget_mb)
    logps = HEAD_IMPLS[impl](head, h, t, chunk_size)
    S = int(batch["num_sequences"])
    sums = torch.zeros(S, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)
    counts = torch.zeros(S, dtype=logps.dtype, device=logps.device).index_add(0, seq, torch.ones_like(logps))
    return LabelLogps(logps, seq, sums, counts)
