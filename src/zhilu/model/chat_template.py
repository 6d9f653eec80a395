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

# The same format as a Jinja template, stored with the tokenizer for `apply_chat_template`: Meta's own
# string, byte for byte as in Meta-Llama-3-8B-Instruct's tokenizer_config.json (note "\n\n'+ message",
# no space before the +). Tools recognise templates by their exact text (TRL swaps this one for its
# assistant-mask training variant), so no reformatting, even one that renders the same.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# What earlier versions of this project shipped and exported (one space more before the +): it renders
# the same, and a tokenizer loaded with it gets Meta's string instead (so every export carries Meta's).
PREVIOUS_TEMPLATES = (LLAMA3_CHAT_TEMPLATE.replace("\n\n'+ message", "\n\n' + message"),)


def meta_template(template: str | None) -> str | None:
    """Meta's Llama-3 template for a template this project wrote earlier; any other template as it is."""
    return LLAMA3_CHAT_TEMPLATE if template in PREVIOUS_TEMPLATES else template

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
