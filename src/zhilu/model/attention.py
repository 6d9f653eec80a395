"""``sdpa_varlen``: document-masked PyTorch sdpa for packed batches, on CPU or any device.

A packed batch fed padding-free (every real token in one row, documents given by
``cu_seq_lens_q`` as for FlashAttention's variable-length kernel; see
:func:`zhilu.objectives.logps.flat_forward`) gets one causal ``scaled_dot_product_attention``
per document, so nothing attends across a sample boundary and no work is spent on the masked
cross-document blocks (``sum L_i^2`` instead of ``T^2`` per row, which a dense block-diagonal
mask would compute). A single padding-free row without ``cu_seq_lens_q`` is split where its
``position_ids`` restart. Everything else (padded batches, generation with a KV cache) is exactly
transformers' ``sdpa``, mask included.

Variable-length attention: Dao 2023, FlashAttention-2, https://arxiv.org/abs/2307.08691;
packing without cross-contamination: Krell et al. 2021, https://arxiv.org/abs/2107.02027.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "sdpa_varlen"
VARLEN_BACKENDS = frozenset({NAME})  # zhilu's backends that read ``cu_seq_lens_q`` (FlashAttention's do too)


def document_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """Start offsets of the documents of one row (``position_ids`` ``[1, N]`` restart at every one), plus N."""
    pos = position_ids[0]
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = pos[1:] - pos[:-1] != 1
    return torch.cat([starts.nonzero().flatten(), torch.tensor([pos.numel()], device=pos.device)])


def sdpa_varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Transformers attention interface: ``query`` ``[B, heads, N, d]``, returns ``[B, N, heads, d]``.

    One padding-free row (no mask, as many keys as queries) is split into documents by
    ``cu_seq_lens_q`` or, without it, where ``position_ids`` restart; anything else is plain sdpa.
    """
    position_ids = kwargs.get("position_ids")
    one_row = query.shape[0] == 1 and attention_mask is None and query.shape[2] == key.shape[2] > 1
    if cu_seq_lens_q is None and not (one_row and position_ids is not None):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if not one_row:
        raise ValueError("sdpa_varlen with cu_seq_lens_q expects one padding-free row and no attention mask")
    bounds = (cu_seq_lens_q if cu_seq_lens_q is not None else document_bounds(position_ids)).tolist()
    gqa = key.shape[1] != query.shape[1]
    out = torch.cat(
        [
            F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                           dropout_p=dropout, scale=scaling, enable_gqa=gqa)
            for s, e in zip(bounds[:-1], bounds[1:])
        ],
        dim=2,
    )
    return out.transpose(1, 2).contiguous(), None


def sdpa_varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                     attention_mask: torch.Tensor | None = None, **kwargs):
    """sdpa's mask, except none for one padding-free row: the attention splits it into documents itself
    (a dense ``[N, N]`` block-diagonal mask over a flattened batch would cost ``N^2`` memory)."""
    from transformers.masking_utils import sdpa_mask

    if batch_size == 1 and attention_mask is None and q_length == kv_length > 1 and q_offset == kv_offset == 0:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                     attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, sdpa_varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_varlen_mask)


register()
