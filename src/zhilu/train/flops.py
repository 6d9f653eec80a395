"""Training FLOPs per token and model FLOPs utilisation (MFU).

FLOPs per token follow PaLM (Chowdhery et al. 2022, https://arxiv.org/abs/2204.02311, App. B):
``6 N + 12 L d T`` for full training, with ``N`` the parameters in matrix multiplies (all but
the embedding lookup), ``L`` layers, ``d`` the attention width (heads x head dim) and ``T`` the
(mean) sequence length each token attends over. The ``6 N`` splits into ``2 N`` forward,
``2 N`` backward to activations and ``2 N`` backward to weights; when most weights are frozen
(LoRA, DoRA, BAdam) the last term counts only the trainable ones: ``4 N + 2 N_trainable``.
"""

from __future__ import annotations

# Dense bf16 peak FLOP/s (no sparsity), from the vendors' datasheets.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
}


def peak_flops(device_name: str) -> float | None:
    """The datasheet peak for a CUDA device name (``torch.cuda.get_device_name()``), or None."""
    name = device_name.upper()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if all(part in name for part in key.upper().split()):
            return PEAK_BF16_FLOPS[key]
    return None


def matmul_params(model) -> int:
    """Parameters used in matrix multiplies: all but the input embedding table."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return total - (embed.weight.numel() if embed is not None else 0)


def flops_per_token(n_params: int, n_layers: int, attn_width: int, seq_len: float,
                    n_trainable: int | None = None) -> float:
    """Training FLOPs for one token (forward + backward)."""
    weight_grads = n_params if n_trainable is None else min(n_trainable, n_params)
    return 4 * n_params + 2 * weight_grads + 12 * n_layers * attn_width * seq_len


def mfu(tokens_per_s: float, flops_token: float, peak: float) -> float:
    return tokens_per_s * flops_token / peak
