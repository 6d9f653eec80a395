"""The Llama-3 chat format, rendered in Python (for label masks) and as a Jinja template (for HF).

Llama-3 instruct format (Meta's model card):
``<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{system}<|eot_id|>``
``<|start_header_id|>user<|end_header_id|>\\n\\n{user}<|eot_id|>``
``<|start_header_id|>assistant<|end_header_id|>\\n\\n{assistant}<|eot_id|>``
Message contents are stripped of surrounding white space, as Meta's template does.
"""

from __future__ import annotations

from typing import Iterable, Mapping

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT, PAD]
ROLES = ("system", "user", "assistant")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. 你是一个乐于助人的助手。"

# The same format as a Jinja template, stored in tokenizer_config.json for `apply_chat_template`.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def header(role: str) -> str:
    return f"{START_HEADER}{role}{END_HEADER}\n\n"


def render_turn(role: str, content: str) -> str:
    return header(role) + content.strip() + EOT


def render(messages: Iterable[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """Render messages to the exact Llama-3 string (BOS first)."""
    text = BOS + "".join(render_turn(m["role"], m["content"]) for m in messages)
    if add_generation_prompt:
        text += header("assistant")
    return text
