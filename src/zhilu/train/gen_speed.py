"""Generation speed of the trained model, with the adapter live and merged (``callbacks=ablation``).

The method comparison of the ZhiLu-2 model card (Full FT / LoRA / BAdam / LoRA+ / DoRA) weighs
inference time next to training time and memory: an unmerged LoRA/DoRA adds a low-rank path to
every linear layer at decode time, and DoRA also renormalises the weight, while a merged adapter
costs nothing. At the end of fit this callback times greedy ``generate`` on a fixed prompt set

- *unmerged*: the live training model (for peft adapters the ``PeftModel`` with its adapters on),
- *merged*: a plain ``*ForCausalLM`` built from the adapter's merged weights
  (:meth:`zhilu.adapters.base.Adapter.base_state_dict`, what ``export/merged`` holds),

and writes ``gen_tokens_per_s_unmerged``, ``gen_tokens_per_s_merged``, ``gen_speedup_merged`` and
``gen_merged_agreement`` (share of greedy tokens on which both agree: a merge check) into
``metrics.json`` through :class:`~zhilu.train.callbacks.RunMetrics`. Every prompt decodes exactly
``max_new_tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``), one prompt at a time; the
prompt set is timed ``repeats`` times per model, alternating live and merged (ABBA order, so
neither always runs second), and the fastest pass counts (the least disturbed by other processes on a shared machine).

LoRA: https://arxiv.org/abs/2106.09685 (section 4: no inference latency once merged);
DoRA: https://arxiv.org/abs/2402.09353.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Sequence

import lightning as L
import torch
from torch import nn

from zhilu.errors import ConfigError
from zhilu.train.cost import merge_metrics

log = logging.getLogger(__name__)

DEFAULT_PROMPTS: tuple[str, ...] = (
    "信用卡的免息期是怎么计算的？",
    "个人征信报告上的逾期记录会保留多久？",
    "等额本息和等额本金有什么区别？",
    "有人说交解冻费就能放款，这是真的吗？",
    "什么是年化利率？",
    "How is the minimum repayment on a credit card calculated?",
)


class GenerationSpeed(L.Callback):
    """Args:
        prompts: user messages, each rendered as a one-turn chat prompt (default: :data:`DEFAULT_PROMPTS`).
        max_new_tokens: tokens decoded per prompt (exactly: EOS is suppressed until then).
        warmup: untimed generations before each timing (kernels, caches, allocator).
        repeats: timed passes over the prompt set per model; the fastest counts.
        merged: also time the merged copy (needs memory for a second copy of the model).
        output_dir: where ``metrics.json`` lives when no ``RunMetrics`` callback is present.
    """

    def __init__(self, prompts: Sequence[str] | None = None, max_new_tokens: int = 32, warmup: int = 1,
                 repeats: int = 1, merged: bool = True, output_dir: str | None = None) -> None:
        if max_new_tokens < 1:
            raise ConfigError(f"callbacks.gen_speed.max_new_tokens={max_new_tokens}: must be >= 1")
        if warmup < 0:
            raise ConfigError(f"callbacks.gen_speed.warmup={warmup}: must be >= 0")
        if repeats < 1:
            raise ConfigError(f"callbacks.gen_speed.repeats={repeats}: must be >= 1")
        self.prompts = [str(p) for p in (prompts if prompts is not None else DEFAULT_PROMPTS)]
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise ConfigError("callbacks.gen_speed.prompts: need at least one non-empty prompt")
        self.max_new_tokens = int(max_new_tokens)
        self.warmup = int(warmup)
        self.repeats = int(repeats)
        self.merged = merged
        self.output_dir = output_dir
        self.results: dict[str, Any] = {}

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            log.warning("gen_speed: skipped (world_size=%d; time generation on one device)", trainer.world_size)
            self.results["gen_speed_skipped"] = f"world_size={trainer.world_size}"
        else:
            self.results.update(self.measure(pl_module))
            log.info("gen_speed: %s", self.results)
        merge_metrics(trainer, self.results, self.output_dir)
        numeric = {f"gen/{k[4:]}": float(v) for k, v in self.results.items() if isinstance(v, (int, float))}
        for lg in trainer.loggers:
            lg.log_metrics(numeric, step=trainer.global_step)

    # ------------------------------------------------------------- measuring
    def prompt_ids(self, tokenizer) -> list[list[int]]:
        from zhilu.model.runtime import GenerationPrompt

        prompt = GenerationPrompt(tokenizer)
        return [prompt([{"role": "user", "content": p}]) for p in self.prompts]

    def measure(self, pl_module) -> dict[str, Any]:
        """Time the live model and its merged copy; return the ``gen_*`` figures."""
        return self.measure_model(pl_module.adapter, pl_module.model, pl_module.tokenizer)

    def measure_model(self, adapter, model: nn.Module, tokenizer) -> dict[str, Any]:
        """:meth:`measure` for a model with its adapter applied (also used by bench/generation.py)."""
        prompts = self.prompt_ids(tokenizer)
        pad_id = tokenizer.pad_token_id
        models = {"unmerged": model}
        if self.merged:
            models["merged"] = merged_copy(adapter, model)
        best: dict[str, float] = {}
        tokens: dict[str, list] = {}
        try:
            for i in range(self.repeats):
                order = list(models.items())
                for name, model in (order if i % 2 == 0 else order[::-1]):  # ABBA: no order bias
                    tps, tokens[name] = self.time_generate(model, prompts, pad_id)
                    best[name] = max(best.get(name, 0.0), tps)
        finally:
            models.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        out: dict[str, Any] = {"gen_prompts": len(prompts), "gen_new_tokens": sum(map(len, tokens["unmerged"])),
                               "gen_repeats": self.repeats}
        out.update({f"gen_tokens_per_s_{name}": tps for name, tps in best.items()})
        if self.merged:
            out["gen_speedup_merged"] = best["merged"] / best["unmerged"]
            out["gen_merged_agreement"] = token_agreement(tokens["unmerged"], tokens["merged"])
        return out

    @torch.no_grad()
    def time_generate(self, model: nn.Module, prompts: list[list[int]], pad_id: int | None) -> tuple[float, list]:
        """Greedy decode every prompt; return (new tokens per second, the new tokens per prompt)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        kw = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.max_new_tokens, "do_sample": False,
              "use_cache": True, "pad_token_id": pad_id}
        try:
            for i in range(self.warmup):
                ids = torch.tensor([prompts[i % len(prompts)]], device=device)
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            _sync(device)
            tokens, generated = 0, []
            start = time.perf_counter()
            for p in prompts:
                ids = torch.tensor([p], device=device)
                seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
                new = seq[0, ids.shape[1]:]
                tokens += new.numel()
                generated.append(new.tolist())
            _sync(device)
            elapsed = time.perf_counter() - start
        finally:
            model.train(was_training)
        return tokens / max(elapsed, 1e-9), generated


def merged_copy(adapter, model: nn.Module) -> nn.Module:
    """A plain ``*ForCausalLM`` holding ``adapter``'s merged weights, on the live model's device/dtype."""
    from zhilu.model.runtime import base_causal_lm

    from transformers import AutoModelForCausalLM

    lm = base_causal_lm(model)
    state = adapter.base_state_dict(model)
    param = next(lm.parameters())
    with torch.device(param.device):  # built in place, in the training dtype (no fp32 detour)
        fresh = AutoModelForCausalLM.from_config(copy.deepcopy(lm.config), dtype=param.dtype)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(fresh)]
    if missing or unexpected:
        raise RuntimeError(f"merged copy of {type(lm).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(lm, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(lm.generation_config)
    return fresh.eval()


def _tied_keys(model: nn.Module) -> set[str]:
    """``lm_head.weight`` when it is tied to the input embeddings (absent from some state dicts)."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    return {"lm_head.weight"} if tied else set()


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions (over all prompts) where two greedy generations emit the same token."""
    total = sum(max(len(x), len(y)) for x, y in zip(a, b))
    same = sum(int(s == t) for x, y in zip(a, b) for s, t in zip(x, y))
    return same / total if total else 1.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
