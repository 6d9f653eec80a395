"""Elimination of failed evolutions: Evol-Instruct's four rules (Xu et al. 2023, section 3.3,
https://arxiv.org/abs/2304.12244), as checks that need no judge model:

1. no information gain: the evolved instruction is (nearly) the parent (character-trigram Jaccard
   similarity at least ``max_similarity``);
2. the model cannot answer it: the answer is empty, only punctuation, or a short refusal
   ("抱歉，我无法……", "I'm sorry, ...");
3. copied prompt words: the instruction contains words of the evolution prompt ("给定指令", "#Rewritten Prompt#" ...);
4. length limits on the instruction and the answer.

Each check returns the reason it fails, or ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from zhilu.data.clean import canonical, char_ngrams, jaccard, normalize_text
from zhilu.synth.evol_prompts import PROMPT_MARKERS

REFUSALS = ("抱歉", "对不起", "很遗憾", "无法回答", "不能回答", "无法提供", "无法完成", "不能提供", "我无法", "我不能",
            "作为一个AI", "作为一个人工智能", "作为AI", "作为人工智能", "sorry", "i cannot", "i can't", "i can not",
            "i am unable", "i'm unable", "as an ai")

_LABEL = re.compile(r"^\s*(#*\s*(改写后的指令|新指令|改写后|Rewritten Prompt|Created Prompt)\s*#*\s*[：:]?\s*)+",
                    re.IGNORECASE)


def strip_label(text: str) -> str:
    """Drop a leading ``#改写后的指令#：`` style label and surrounding quotes that models often echo."""
    text = _LABEL.sub("", normalize_text(text))
    if len(text) >= 2 and text[0] + text[-1] in ('""', "“”", "「」", "''"):
        text = text[1:-1].strip()
    return text


@dataclass
class EvolFilter:
    """Evol-Instruct's elimination rules, with this project's thresholds."""

    min_instruction_chars: int = 4
    max_instruction_chars: int = 2000
    min_answer_chars: int = 2
    max_answer_chars: int = 8000
    max_similarity: float = 0.9
    refusal_max_chars: int = 200
    prompt_markers: Sequence[str] = PROMPT_MARKERS
    refusals: Sequence[str] = REFUSALS

    def check_instruction(self, parent: str, child: str) -> str | None:
        if not canonical(child):
            return "empty instruction"
        low = child.lower()
        if any(m.lower() in low for m in self.prompt_markers):
            return "copied prompt words"
        if len(child) < self.min_instruction_chars:
            return "instruction too short"
        if len(child) > self.max_instruction_chars:
            return "instruction too long"
        if canonical(child) == canonical(parent) or \
                jaccard(char_ngrams(child, 3), char_ngrams(parent, 3)) >= self.max_similarity:
            return "no information gain"
        return None

    def check_answer(self, answer: str) -> str | None:
        if not canonical(answer):
            return "empty answer"
        if len(answer) < self.min_answer_chars:
            return "answer too short"
        if len(answer) > self.max_answer_chars:
            return "answer too long"
        low = answer.lower()
        if len(answer) <= self.refusal_max_chars and any(r in low for r in self.refusals):
            return "refusal"
        return None
