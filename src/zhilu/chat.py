"""Chat with a model in the Llama-3 template: the original model card's quick-start loop.

Interactive: ``python chat.py model.path=<run dir | export dir | HF folder>``; ``/reset`` clears
the history, ``/exit`` quits. Batch: ``python chat.py prompts_file=prompts.txt output=answers.jsonl``
(one prompt per line, or JSONL with a ``prompt`` field) writes one JSON answer per prompt.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

import torch

from zhilu.model.runtime import GenerationPrompt
from zhilu.errors import DataError
from zhilu.model.chat_template import DEFAULT_SYSTEM_PROMPT
from zhilu.utils.jsonl import iter_lines

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    temperature: float = 0.4
    top_p: float = 0.9
    max_new_tokens: int = 256
    min_new_tokens: int = 1
    repetition_penalty: float = 1.0
    do_sample: bool = True

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
              "repetition_penalty": self.repetition_penalty}
        if self.do_sample and self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kw.update(do_sample=False)
        return kw


class ChatSession:
    """Multi-turn history + generation with the Llama-3 template."""

    def __init__(self, model, tokenizer, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 sampling: SamplingConfig | None = None, max_context: int | None = None) -> None:
        self.model = model.eval()
        self.tok = tokenizer
        self.prompt = GenerationPrompt(tokenizer)
        self.system_prompt = system_prompt
        self.sampling = sampling or SamplingConfig()
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", 8192)
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def messages(self, user: str) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return sys_msg + self.history + [{"role": "user", "content": user}]

    def _prompt_ids(self, user: str) -> list[int]:
        ids = self.prompt(self.messages(user))
        budget = self.max_context - self.sampling.max_new_tokens
        while len(ids) > budget and len(self.history) >= 2:  # forget the oldest exchange
            self.history = self.history[2:]
            ids = self.prompt(self.messages(user))
        return ids

    @torch.no_grad()
    def reply(self, user: str, stream: TextIO | None = None) -> str:
        ids = torch.tensor([self._prompt_ids(user)], device=self.model.device)
        streamer = None
        if stream is not None:
            streamer = _StreamTo(self.tok, stream)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            streamer=streamer,
            pad_token_id=self.tok.pad_token_id,
            **self.sampling.generate_kwargs(),
        )
        answer = self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return answer


def _StreamTo(tokenizer, stream: TextIO):
    from transformers import TextStreamer

    class StreamTo(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            stream.write(text + ("\n" if stream_end else ""))
            stream.flush()

    return StreamTo(tokenizer, skip_prompt=True, skip_special_tokens=True)


def read_prompts(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompts_file={path}: no such file")
    prompts = []
    for lineno, line in iter_lines(p):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{lineno}: bad JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise DataError(f"{p}:{lineno}: expected an object with a 'prompt' string")
            prompts.append(row["prompt"])
        else:
            prompts.append(line.strip())
    return prompts


def answer_file(session: ChatSession, prompts: Iterable[str], output: str | Path) -> int:
    """Answer each prompt independently (fresh history) and write JSONL ``{prompt, answer}``."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w", encoding="utf-8") as f:
        for prompt in prompts:
            session.reset()
            f.write(json.dumps({"prompt": prompt, "answer": session.reply(prompt)}, ensure_ascii=False) + "\n")
            f.flush()
            n += 1
    return n


def interactive(session: ChatSession, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    stdout.write("zhilu chat — /reset clears the history, /exit quits\n")
    while True:
        stdout.write("\n用户 > ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # EOF
            break
        user = line.strip()
        if not user:
            continue
        if user == "/exit":
            break
        if user == "/reset":
            session.reset()
            stdout.write("(history cleared)\n")
            continue
        stdout.write("助手 > ")
        session.reply(user, stream=stdout)
