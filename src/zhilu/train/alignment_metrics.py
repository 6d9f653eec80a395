"""Held-out figures that put every alignment objective on the same scale (``callbacks=alignment``).

DPO, IPO, hinge, SimPO, ORPO and KTO each log their own rewards (beta-scaled, length-normalised
or not, reference-free or not), which cannot be compared across objectives. At every validation
this callback measures the policy against the model *as it was at fit start* (the SFT model the
study starts from: the reference of the reference-based losses) on fixed held-out data:

- ``val/heldout_reward_accuracy``: share of held-out preference pairs whose implied reward
  ``log pi(y|x) - log pi_ref(y|x)`` (summed over answer tokens, no beta) is higher for the chosen
  answer than for the rejected one (strictly: 0 at step 0);
- ``val/heldout_margin``: mean of chosen minus rejected implied reward (nats);
- ``val/heldout_kl``: mean per-token ``KL(pi || pi_ref)`` over the vocabulary at every position
  of the held-out chosen answers (nats/token; exact, not a sampled estimate);
- ``val/sft_val_loss``: mean token NLL on the in-domain SFT validation set (what alignment costs).

The reference figures (per-pair log-prob sums, and the reference's log-softmax at the chosen
answers' positions, fp16 on the CPU: ``answer tokens x vocab`` values) are computed once at fit
start and cached in ``<run dir>/alignment_ref.pt``, so a resumed run keeps its fit-start
reference. Single-device (CPU or one GPU) runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from zhilu.data.collate import PaddedCollator
from zhilu.data.encode import ChatEncoder, Example
from zhilu.data.formats import iter_rows

log = logging.getLogger(__name__)

CACHE_NAME = "alignment_ref.pt"


def _digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.input_ids).encode())
        h.update(json.dumps(ex.labels).encode())
    return h.hexdigest()


class AlignmentMetrics(L.Callback):
    """Args:
        pairs_file: held-out preference pairs (``preference`` rows), e.g. ``data/finance_dpo/val.jsonl``.
        sft_val_file: in-domain SFT validation dialogues (``chat`` rows); ``None`` skips the SFT loss.
        output_dir: the run dir (the reference cache); ``None`` keeps it in memory only.
        max_length: token budget per sequence (as ``data.max_length``).
        batch_size: pairs (or dialogues) per forward pass.
        limit: use the first ``limit`` pairs / dialogues.
    """

    def __init__(self, pairs_file: str, sft_val_file: str | None = None, output_dir: str | None = None,
                 max_length: int = 512, batch_size: int = 8, limit: int | None = None) -> None:
        self.pairs_file = pairs_file
        self.sft_val_file = sft_val_file
        self.output_dir = output_dir
        self.max_length = max_length
        self.batch_size = max(1, int(batch_size))
        self.limit = limit
        self.pairs: list[Example] | None = None
        self.sft: list[Example] = []
        self.ref: dict[str, Any] | None = None
        self.pad = 0
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------ data
    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.pairs is not None:
            return
        self.pad = pl_module.tokenizer.pad_token_id
        enc = ChatEncoder(pl_module.tokenizer, self.max_length, "truncate")
        pairs = [enc.pair(r.prompt, r.chosen, r.rejected, what=f"{self.pairs_file} row {i + 1}")
                 for i, r in enumerate(iter_rows(self.pairs_file, "preference"))]
        self.pairs = [ex for ex in pairs if ex is not None][: self.limit]
        if self.sft_val_file:
            sft = [enc.sft(m) for m in iter_rows(self.sft_val_file, "chat")]
            self.sft = [ex for ex in sft if ex is not None][: self.limit]
        log.info("alignment metrics: %d held-out pairs, %d SFT validation dialogues", len(self.pairs), len(self.sft))

    def _batches(self, examples: list[Example], device):
        collate = PaddedCollator(self.pad)
        for start in range(0, len(examples), self.batch_size):
            part = examples[start : start + self.batch_size]
            batch = collate(part)
            yield part, {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    @torch.no_grad()
    def _pass(self, model, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-pair log-prob sums ``[P, 2]`` and, per pair, the log-softmax ``[n, V]`` at the chosen
        answer's positions."""
        from zhilu.model.runtime import base_causal_lm
        from zhilu.objectives.logps import labelled_hidden

        head = base_causal_lm(model).lm_head
        sums, chosen_lsm = [], []
        for part, batch in self._batches(self.pairs, device):
            h, t, seq = labelled_hidden(model, batch)
            lsm = F.log_softmax(head(h).float(), dim=-1)
            tok = lsm.gather(1, t[:, None])[:, 0]
            s = torch.zeros(2 * len(part), dtype=torch.float32, device=tok.device).index_add(0, seq, tok)
            sums.append(s.view(-1, 2).cpu())
            for k in range(len(part)):
                chosen_lsm.append(lsm[seq == 2 * k])
        return torch.cat(sums), chosen_lsm

    # ------------------------------------------------------------------ reference
    def on_fit_start(self, trainer, pl_module) -> None:
        key = _digest(self.pairs) + str(getattr(pl_module.builder, "path", None))
        path = Path(self.output_dir) / CACHE_NAME if self.output_dir else None
        if path is not None and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                self.ref = saved
                log.info("alignment metrics: reference figures from %s", path)
                return
        if trainer.ckpt_path:
            log.warning("alignment metrics: resuming without %s; the reference is the resumed model", CACHE_NAME)
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            sums, lsm = self._pass(model, pl_module.device)
        finally:
            model.train(was_training)
        self.ref = {"key": key, "sums": sums, "chosen_logsoftmax": [x.to(torch.float16).cpu() for x in lsm]}
        if path is not None and trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.ref, path)

    # ------------------------------------------------------------------ figures
    @torch.no_grad()
    def measure(self, model, device) -> dict[str, float]:
        if self.ref is None:
            raise RuntimeError("alignment metrics: no reference (on_fit_start did not run)")
        sums, lsm = self._pass(model, device)
        ratios = sums - self.ref["sums"]
        margin = ratios[:, 0] - ratios[:, 1]
        kl_sum, n_tok = 0.0, 0
        for p_lsm, q_lsm in zip(lsm, self.ref["chosen_logsoftmax"]):
            q = q_lsm.to(p_lsm.device, torch.float32)
            kl_sum += float((p_lsm.exp() * (p_lsm - q)).sum())
            n_tok += p_lsm.shape[0]
        out = {"heldout_reward_accuracy": float((margin > 0).float().mean()),
               "heldout_margin": float(margin.mean()),
               "heldout_kl": kl_sum / max(n_tok, 1)}
        if self.sft:
            from zhilu.objectives.logps import label_logps

            nll, n = 0.0, 0
            for _, batch in self._batches(self.sft, device):
                lp = label_logps(model, batch, "torch")
                nll -= float(lp.token_logps.sum())
                n += lp.token_logps.numel()
            out["sft_val_loss"] = nll / max(n, 1)
        return out

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.ref is None:
            return
        self.last = self.measure(pl_module.model, pl_module.device)
        for k, v in self.last.items():
            pl_module.log(f"val/{k}", v, batch_size=1)
