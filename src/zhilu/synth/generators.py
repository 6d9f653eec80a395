"""Pluggable chat models for synthesis: the local Hugging Face model, or an OpenAI-compatible server.

Both implement ``generate`` (the ``Generator`` protocol of ``zhilu.synth.store``) and the two
scoring calls the uncertainty estimators use: ``choice_logprobs`` (next-token log-probabilities of
answer letters) and ``generate_with_entropy`` (greedy answer + mean per-token entropy).

- ``LocalLM``: any export of this project or Hugging Face folder (``model.path=...``), or the
  embedded default; batched ``generate`` with left padding and the Llama-3 chat template
  (``ChatEncoder.prompt``).
- ``OpenAIChatGenerator``: ``POST {base_url}/chat/completions`` (OpenAI's chat completions API as
  served by vLLM, llama.cpp, TGI ...), with concurrency, retries, back-off and a rate limit.
  Log-probabilities come from ``logprobs``/``top_logprobs``; with top-k log-probabilities only,
  the token entropy is a lower-bound estimate (the missing mass is one bucket).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Iterator, Mapping, Sequence

from zhilu.errors import ConfigError
from zhilu.synth.http import RateLimiter, RemoteError, request_json
from zhilu.synth.store import Messages

log = logging.getLogger(__name__)


def entropy_from_logprobs(logprobs: Sequence[float]) -> float:
    """Entropy (nats) of a distribution given by (possibly partial) log-probabilities; a missing
    mass ``1 - sum(p)`` counts as one more outcome."""
    ps = [math.exp(x) for x in logprobs if x is not None and x > -math.inf]
    rest = max(0.0, 1.0 - sum(ps))
    return -sum(p * math.log(p) for p in ps + [rest] if p > 0)


class LocalLM:
    """A local causal LM (``zhilu.model.ModelBuilder``) for batched generation and scoring.

    Args:
        model: the ``ModelBuilder`` (``model.path=<run dir | export | HF folder>``, or the embedded default).
        batch_size: prompts per ``generate`` call (sorted by length to waste little padding).
        max_new_tokens, temperature, top_p, do_sample, repetition_penalty: sampling settings.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        max_context: prompt + answer budget; longer prompts keep their end (default: the model's maximum).
    """

    name = "local"

    def __init__(self, model=None, batch_size: int = 8, max_new_tokens: int = 256, temperature: float = 0.7,
                 top_p: float = 0.9, do_sample: bool = True, repetition_penalty: float = 1.0, device: str = "auto",
                 seed: int = 0, max_context: int | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"generator.batch_size={batch_size}: expected >= 1")
        self.builder = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_p, self.do_sample = temperature, top_p, do_sample
        self.repetition_penalty = repetition_penalty
        self.device = device
        self.seed = seed
        self.max_context = max_context
        self.model = None
        self.tokenizer = None
        self.prompt = None

    @property
    def identity(self) -> str:
        """Names the model in cache keys: a different model never reuses another's completions."""
        if self.builder is None:
            return "local:objects"
        b = self.builder
        return f"local:{b.path}" if b.path else f"local:{b.name}:seed{b.seed}"

    @classmethod
    def from_objects(cls, model, tokenizer, **kwargs: Any) -> "LocalLM":
        lm = cls(None, **kwargs)
        lm.model, lm.tokenizer = model.eval(), tokenizer
        lm._setup()
        return lm

    # ------------------------------------------------------------------ loading
    def _ensure(self) -> None:
        if self.model is not None:
            return
        import torch

        from zhilu.model.runtime import load_model

        if self.builder is None:
            raise ConfigError("generator=local needs a model (conf/model, or model.path=<export>)")
        torch.manual_seed(self.seed)
        self.model, self.tokenizer = load_model(self.builder, self.device)
        self._setup()

    def _setup(self) -> None:
        from zhilu.model.runtime import GenerationPrompt

        self.prompt = GenerationPrompt(self.tokenizer)
        self.encoder = self.prompt.encoder
        self.pad_id = self.tokenizer.pad_token_id
        cfg = self.model.generation_config
        eos = cfg.eos_token_id if cfg is not None else None
        self.stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_ids.add(self.encoder.eot)
        if self.max_context is None:
            self.max_context = getattr(self.model.config, "max_position_embeddings", 8192)

    # ------------------------------------------------------------------ batching
    @property
    def truncated_prompts(self) -> int:
        """Prompts cut to fit the context (BOS and the end kept)."""
        return self.prompt.truncated if self.prompt is not None else 0

    def _prompt_ids(self, messages: Messages, prefix: str, new_tokens: int) -> list[int]:
        return self.prompt(messages, prefix, budget=max(8, self.max_context - new_tokens))

    def _left_pad(self, seqs: list[list[int]]):
        from zhilu.model.runtime import pad_rows

        return pad_rows(seqs, self.pad_id, self.model.device, side="left")

    def _batches(self, encoded: list[list[int]]) -> Iterator[list[int]]:
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        for start in range(0, len(order), self.batch_size):
            yield order[start: start + self.batch_size]

    def _sampling(self, do_sample: bool | None = None) -> dict:
        sample = self.do_sample if do_sample is None else do_sample
        if sample and self.temperature > 0:
            return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        return {"do_sample": False}

    # ------------------------------------------------------------------ API
    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | None = None,
                 do_sample: bool | None = None) -> Iterator[tuple[int, str]]:
        import torch

        self._ensure()
        new = max_new_tokens or self.max_new_tokens
        encoded = [self._prompt_ids(m, "", new) for m in prompts]
        for idx in self._batches(encoded):
            ids, mask = self._left_pad([encoded[i] for i in idx])
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, use_cache=True,
                                          pad_token_id=self.pad_id, repetition_penalty=self.repetition_penalty,
                                          **self._sampling(do_sample))
            for j, i in enumerate(idx):
                yield i, self.tokenizer.decode(out[j, ids.shape[1]:], skip_special_tokens=True).strip()

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str],
                        assistant_prefix: str = "") -> list[list[float]]:
        """Log-probabilities (over the whole vocabulary) of each choice's first token as the next
        token after the prompt and ``assistant_prefix`` (e.g. ``答案：``). Choices A-D are scored by
        ``zhilu.eval.scoring.LetterLoglikScorer`` (right padding, one forward pass per batch); other
        choice sets by the same computation here, on left-padded batches."""
        import torch

        from zhilu.eval.loader import LETTERS as EVAL_LETTERS
        from zhilu.eval.scoring import LetterLoglikScorer

        self._ensure()
        encoded = [self._prompt_ids(m, assistant_prefix, 1) for m in prompts]
        if tuple(choices) == tuple(EVAL_LETTERS):  # A-D: the evaluation harness's scorer (zhilu.eval)
            scored = LetterLoglikScorer(batch_size=self.batch_size)(self.model, self.tokenizer, encoded)
            return [s.letter_logprobs for s in scored]
        token_ids = []
        for c in choices:
            ids = self.encoder.text(c)
            if not ids:
                raise ConfigError(f"answer choice {c!r} has no tokens")
            token_ids.append(ids[0])
        out: list[list[float]] = [[] for _ in prompts]
        for idx in self._batches(encoded):
            ids, mask = self._left_pad([encoded[i] for i in idx])
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            lp = torch.log_softmax(logits[:, -1, :].float(), dim=-1)[:, token_ids]
            for j, i in enumerate(idx):
                out[i] = lp[j].tolist()
        return out

    def generate_with_entropy(self, prompts: Sequence[Messages], max_new_tokens: int = 64) -> list[tuple[str, float]]:
        """Greedy answers and the mean entropy (nats) of the model's next-token distributions over
        the answer's tokens (up to and including the stop token)."""
        import torch

        self._ensure()
        encoded = [self._prompt_ids(m, "", max_new_tokens) for m in prompts]
        out: list[tuple[str, float]] = [("", 0.0)] * len(prompts)
        stops = torch.tensor(sorted(self.stop_ids))
        for idx in self._batches(encoded):
            ids, mask = self._left_pad([encoded[i] for i in idx])
            with torch.no_grad():
                res = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          use_cache=True, pad_token_id=self.pad_id, do_sample=False,
                                          output_logits=True, return_dict_in_generate=True)
            logits = torch.stack(res.logits, dim=1).float()  # [B, steps, V]
            logp = torch.log_softmax(logits, dim=-1)
            ent = -(logp.exp() * logp).sum(-1)  # [B, steps]
            gen = res.sequences[:, ids.shape[1]:].cpu()
            is_stop = torch.isin(gen, stops)
            valid = (is_stop.long().cumsum(-1) - is_stop.long()) == 0  # up to the first stop token
            ent = ent.cpu()
            for j, i in enumerate(idx):
                n = int(valid[j].sum())
                text = self.tokenizer.decode(gen[j], skip_special_tokens=True).strip()
                out[i] = (text, float(ent[j, :n].mean()) if n else 0.0)
        return out


class OpenAIChatGenerator:
    """A chat model behind an OpenAI-compatible ``/chat/completions`` endpoint (e.g. ``vllm serve``).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the served model name.
        api_key_env: environment variable holding the API key (sent as a Bearer token when set).
        concurrency: requests in flight at once; requests_per_minute: rate limit (``null``: none).
        max_retries, backoff_s, max_backoff_s: retry policy; timeout_s: the deadline of one completion,
            retries included (see ``zhilu.synth.http``); max_response_bytes: the largest reply accepted.
        extra_body: more fields for every request (e.g. ``{stop: [...]}``, vLLM's ``top_k``).
    """

    name = "http"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.7, top_p: float = 0.9, max_new_tokens: int = 512, concurrency: int = 4,
                 requests_per_minute: float | None = None, timeout_s: float = 120.0, max_retries: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0, top_logprobs: int = 20,
                 extra_body: Mapping[str, Any] | None = None, max_response_bytes: int = 64 << 20) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"generator.base_url={base_url!r}: expected an http(s):// URL")
        if concurrency < 1:
            raise ConfigError(f"generator.concurrency={concurrency}: expected >= 1")
        if not timeout_s or timeout_s <= 0 or max_response_bytes < 1 or max_retries < 0:
            raise ConfigError(f"generator.timeout_s={timeout_s}, max_response_bytes={max_response_bytes}, "
                              f"max_retries={max_retries}: expected timeout_s > 0, max_response_bytes >= 1, max_retries >= 0")
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.concurrency = concurrency
        self.limiter = RateLimiter(requests_per_minute)
        self.retry = {"timeout_s": timeout_s, "max_retries": max_retries, "backoff_s": backoff_s,
                      "max_backoff_s": max_backoff_s, "max_bytes": max_response_bytes}
        self._cancel = threading.Event()  # set by _map when a request fails for good: the others stop at once
        self.top_logprobs = top_logprobs
        self.extra_body = dict(extra_body or {})

    @property
    def identity(self) -> str:
        return f"http:{self.model}"

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def complete(self, messages: Messages, **params: Any) -> dict:
        """One chat completion; returns ``choices[0]`` of the reply."""
        payload = {"model": self.model, "messages": list(messages), "temperature": self.temperature,
                   "top_p": self.top_p, "max_tokens": self.max_new_tokens, **self.extra_body, **params}
        reply = request_json(self.url, payload, self._headers(), limiter=self.limiter, what="chat completion",
                             cancel=self._cancel, **self.retry)
        try:
            choice = reply["choices"][0]
            if not isinstance(choice["message"]["content"], (str, type(None))):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise RemoteError(f"chat completion {self.url}: unexpected reply {str(reply)[:200]}") from None
        choice["message"]["content"] = choice["message"]["content"] or ""
        return choice

    def _map(self, prompts: Sequence[Messages], fn) -> Iterator[tuple[int, Any]]:
        """Run ``fn(messages)`` over ``prompts`` with ``concurrency`` threads, yielding results as they
        finish. After a failure nothing new is sent and the requests in flight are cancelled (their
        sockets closed: a fatal HTTP 400 ends the run at once, not after the others' time-outs); results
        that arrived meanwhile are still yielded (so they can be saved), then the first error is raised."""
        from zhilu.synth.http import Cancelled

        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        pending: dict[Future, int] = {}
        todo = iter(enumerate(prompts))
        error: BaseException | None = None
        self._cancel.clear()
        try:
            for i, m in todo:
                pending[pool.submit(fn, m)] = i
                if len(pending) >= self.concurrency:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    if fut.exception() is not None:
                        if not isinstance(fut.exception(), Cancelled) or error is None:
                            error = error or fut.exception()
                        self._cancel.set()
                        continue
                    yield i, fut.result()
                    nxt = next(todo, None) if error is None else None
                    if nxt is not None:
                        pending[pool.submit(fn, nxt[1])] = nxt[0]
        finally:
            if pending:  # left early (an error, or the caller stopped): end the requests still in flight
                self._cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
        if error is not None:
            raise error

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | None = None) -> Iterator[tuple[int, str]]:
        params = {"max_tokens": max_new_tokens} if max_new_tokens else {}
        for i, choice in self._map(prompts, lambda m: self.complete(m, **params)):
            yield i, choice["message"]["content"].strip()

    def choice_logprobs(self, prompts: Sequence[Messages], choices: Sequence[str],
                        assistant_prefix: str = "") -> list[list[float]]:
        """Top-``top_logprobs`` log-probabilities of the first answer token, read for each choice
        (a choice outside the top list gets ``-inf``). ``assistant_prefix`` is not sent: chat
        servers start the answer themselves, so the prompt should ask for the letter only."""
        def one(m):
            return self.complete(m, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top_logprobs)

        out: list[list[float]] = [[] for _ in prompts]
        for i, choice in self._map(prompts, one):
            try:
                top = choice["logprobs"]["content"][0]["top_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise RemoteError(f"chat completion {self.url}: no top_logprobs in the reply "
                                  "(does the server support logprobs?)") from None
            best = {c: -math.inf for c in choices}
            for entry in top:
                tok = str(entry.get("token", "")).strip()
                if tok in best:
                    best[tok] = max(best[tok], float(entry["logprob"]))
            out[i] = [best[c] for c in choices]
        return out

    def generate_with_entropy(self, prompts: Sequence[Messages], max_new_tokens: int = 64) -> list[tuple[str, float]]:
        def one(m):
            return self.complete(m, max_tokens=max_new_tokens, temperature=0.0, logprobs=True,
                                 top_logprobs=self.top_logprobs)

        out: list[tuple[str, float]] = [("", 0.0)] * len(prompts)
        for i, choice in self._map(prompts, one):
            tokens = (choice.get("logprobs") or {}).get("content") or []
            ents = [entropy_from_logprobs([t["logprob"] for t in tok.get("top_logprobs", [])]) for tok in tokens]
            out[i] = (choice["message"]["content"].strip(), sum(ents) / len(ents) if ents else 0.0)
        return out
