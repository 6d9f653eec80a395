"""PiSSA / OLoRA correctness figures: the reference each could use, and the exported adapter.

    python bench/residual_lora.py [--size tiny] [--steps 5]

For each init (LoRA, PiSSA, OLoRA; r=16, all linear layers, fp32, CPU) on a Llama-3-shape model with
random weights and the project's DPO sample pairs:

- ``disabled vs base``: largest logit difference between the adapter switched off and the original
  base (what a "disabled adapter" reference would compare against);
- ``DPO step 0``: loss minus log 2 and ``rewards/chosen`` before any step, with the adapter's stated
  reference and (for comparison) with the disabled adapter forced in;
- after ``--steps`` AdamW steps on the chosen answers as SFT rows (``trained vs base``: how far they moved): largest logit difference between ``export/merged`` and
  ``export/adapter`` on the original base, and between the merged model and the adapter as trained
  saved without conversion, on the original base.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bench.common import model_config
    from zhilu.adapters import LoRA
    from zhilu.data.collate import PaddedCollator
    from itertools import islice

    from zhilu.data.encode import ChatEncoder
    from zhilu.data.formats import iter_rows
    from zhilu.model import ModelBuilder
    from zhilu.objectives import DPO
    from zhilu.objectives.logps import label_logps
    from zhilu.objectives.reference import ReferencePolicy
    from zhilu.train.module import ZhiluModule

    builder = ModelBuilder(config=model_config(args.size), dtype="float32", attn_implementation="sdpa", seed=0)
    tok = builder.load_tokenizer()
    enc = ChatEncoder(tok, max_length=256)
    # the project's reader: lines end at \n only, bad rows named by file:line
    rows = list(islice(iter_rows(ROOT / "data/finance_dpo/train.jsonl", "preference"), 8))
    pairs = []
    for i, pr in enumerate(rows):
        ex = enc.pair(pr.prompt, pr.chosen, pr.rejected)
        ex.meta["id"] = i
        pairs.append(ex)
    pair_batch = PaddedCollator(tok.pad_token_id)(pairs)
    sft_batch = PaddedCollator(tok.pad_token_id)([  # the chosen answers as SFT rows
        enc.sft([*r.prompt, {"role": "assistant", "content": r.chosen}]) for r in rows])
    ids = sft_batch["input_ids"][:2]
    original = builder.build(tok).eval()
    with torch.no_grad():
        base_logits = original(input_ids=ids).logits

    print("| init | reference | disabled vs base | DPO step 0: loss - log 2 | rewards/chosen | same, disabled adapter "
          "forced | trained vs base | converted adapter vs merged | unconverted adapter vs merged |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for init in (True, "pissa_niter_4", "olora"):
        torch.manual_seed(0)
        adapter = LoRA(r=16, alpha=32, dropout=0.0, init_lora_weights=init)
        module = ZhiluModule(model=builder, adapter=adapter, objective=DPO(beta=0.1), tokenizer=tok)
        module.configure_model()
        model = module.model
        model.eval()
        with torch.no_grad(), model.disable_adapter():
            disabled_gap = (model(input_ids=ids).logits - base_logits).abs().max().item()
        loss, logs = module.objective.loss(module, pair_batch, "train")
        forced = ReferencePolicy("disabled", module.objective._logps)
        module.objective.reference, stated = forced, module.objective.reference
        f_loss, f_logs = module.objective.loss(module, pair_batch, "train")
        module.objective.reference = stated
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        model.train()
        for _ in range(args.steps):
            lp = label_logps(model, sft_batch)
            (-lp.token_logps.mean()).backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        with tempfile.TemporaryDirectory() as d:
            adapter.export(model, tok, Path(d) / "export")
            merged = AutoModelForCausalLM.from_pretrained(Path(d) / "export" / "merged").eval()
            conv = PeftModel.from_pretrained(builder.build(tok), Path(d) / "export" / "adapter").eval()
            model.save_pretrained(str(Path(d) / "raw"))
            raw_cfg = json.loads((Path(d) / "raw" / "adapter_config.json").read_text())
            raw_cfg["init_lora_weights"] = True  # as the trained A, B would be used on the original base
            (Path(d) / "raw" / "adapter_config.json").write_text(json.dumps(raw_cfg))
            raw = PeftModel.from_pretrained(builder.build(tok), Path(d) / "raw").eval()
            with torch.no_grad():
                m = merged(input_ids=ids).logits
                trained_gap = (m - base_logits).abs().max().item()
                conv_gap = (conv(input_ids=ids).logits - m).abs().max().item()
                raw_gap = (raw(input_ids=ids).logits - m).abs().max().item()
        name = {True: "lora"}.get(init, init)
        print(f"| {name} | {adapter.reference} | {disabled_gap:.2g} | {loss.item() - math.log(2):.1e} | "
              f"{logs['rewards/chosen'].item():.1e} | {f_loss.item() - math.log(2):.1e}, "
              f"{f_logs['rewards/chosen'].item():.1e} | {trained_gap:.2g} | {conv_gap:.1e} | {raw_gap:.2g} |")


if __name__ == "__main__":
    main()
