"""The official answer-only prompt formats of C-Eval, CMMLU and FinEval, and prompt building.

C-Eval (Huang et al., 2023, https://arxiv.org/abs/2305.08322), following hkust-nlp/ceval
``code/evaluator_series/evaluators/llama.py`` (``format_example``, ``generate_few_shot_prompt``)
and ``resources/tutorial.md`` (completion and chat formats)::

    以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：{answer}\\n\\n      (x k shots from dev/)
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：

The official script fills ``{科目}`` with its ``--subject`` argument; the tutorial asks for the
subject's name, and OpenCompass / lm-evaluation-harness use the Chinese name, as we do.
Chat mode (tutorial section 3.2): the instruction line is the system message, each shot is a
user turn (the question, ending ``答案：``) answered by an assistant turn holding the letter.

CMMLU (Li et al., 2023, https://arxiv.org/abs/2306.09212), following haonan-li/CMMLU
``src/mp_utils.py`` (``format_example``, ``gen_prompt``)::

    以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n\\n
    题目：{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：{answer}\\n\\n  (x k shots from dev/)
    题目：{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：

Chat mode follows CMMLU ``src/llama3.py``: the whole prompt is one user message.

FinEval (Zhang et al., 2023, https://arxiv.org/abs/2308.09975), following SUFE-AIFLM-Lab/FinEval
``code/opensource_eval/1academic_eval/code/evaluators/unify_evaluator.py``: the C-Eval example
format; the header (its own wording) appears only with shots, the zero-shot prompt is the bare question.

Over-long prompts: like CMMLU's ``gen_prompt``, the longest shots are dropped first (one at a time
here, the later one on ties) until the prompt fits; then the header goes; then, as a last resort,
the prompt is cut from the left (BOS kept). Every prompt reports what was dropped.

Option and question texts are used exactly as stored in the CSV (the official scripts read
them with pandas, which would print an option ``0.10`` as ``0.1``).
"""

from __future__ import annotations

from dataclasses import dataclass

from zhilu.eval.loader import LETTERS, Question
from zhilu.eval.subjects import Subject


@dataclass
class MCQFormat:
    """An answer-only multiple-choice prompt format (fields are plain templates, overridable in YAML).

    Args:
        header: instruction line(s) before the examples; ``{subject_zh}``, ``{subject_en}``, ``{subject}``.
        zero_shot_header: whether the header is also used without shots.
        question_prefix: text before each question.
        answer_prefix: text after the options, before the answer letter.
        example_end: text after a shot's answer letter.
        chat_multi_turn: chat mode with one user/assistant exchange per shot and the header as
            system message (C-Eval tutorial); otherwise the completion prompt is one user message.
    """

    header: str = "以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。\n\n"
    zero_shot_header: bool = True
    question_prefix: str = ""
    answer_prefix: str = "\n答案："
    example_end: str = "\n\n"
    chat_multi_turn: bool = True

    def head(self, subject: Subject, n_shots: int) -> str:
        if n_shots == 0 and not self.zero_shot_header:
            return ""
        return self.header.format(subject_zh=subject.name_zh, subject_en=subject.name_en, subject=subject.name)

    def question(self, q: Question) -> str:
        """The question with its options, ending with the answer prefix (``答案：``)."""
        text = self.question_prefix + q.question
        for letter, option in zip(LETTERS, q.options):
            text += f"\n{letter}. {option}"
        return text + self.answer_prefix

    def example(self, q: Question) -> str:
        """A solved shot: the question, its answer letter and the separator."""
        return self.question(q) + f"{q.answer}" + self.example_end

    def completion(self, subject: Subject, shots: list[Question], q: Question, header: bool = True) -> str:
        head = self.head(subject, len(shots)) if header else ""
        return head + "".join(self.example(s) for s in shots) + self.question(q)

    def chat(self, subject: Subject, shots: list[Question], q: Question, header: bool = True) -> list[dict]:
        if not self.chat_multi_turn:
            return [{"role": "user", "content": self.completion(subject, shots, q, header)}]
        head = self.head(subject, len(shots)).strip() if header else ""
        messages = [{"role": "system", "content": head}] if head else []
        for s in shots:
            messages += [{"role": "user", "content": self.question(s)},
                         {"role": "assistant", "content": f"{s.answer}"}]
        return messages + [{"role": "user", "content": self.question(q)}]


@dataclass
class CEvalFormat(MCQFormat):
    """C-Eval answer-only (hkust-nlp/ceval ``evaluators/llama.py``, ``resources/tutorial.md``)."""


@dataclass
class CMMLUFormat(MCQFormat):
    """CMMLU answer-only (haonan-li/CMMLU ``src/mp_utils.py``; chat as in ``src/llama3.py``)."""

    header: str = "以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\n\n"
    question_prefix: str = "题目："
    answer_prefix: str = "\n答案是："
    chat_multi_turn: bool = False


@dataclass
class FinEvalFormat(MCQFormat):
    """FinEval answer-only (SUFE-AIFLM-Lab/FinEval ``evaluators/unify_evaluator.py``)."""

    header: str = ("以下是中国关于{subject_zh}考试的单项选择题，我会给你几个有答案的例子，"
                   "请你根据最后一个题目的要求进行回答。\n你只需要回答最后一个题目\n\n")
    zero_shot_header: bool = False
    chat_multi_turn: bool = False


@dataclass
class Prompt:
    """A tokenized prompt and what had to be dropped to fit the context."""

    ids: list[int]
    shots: int  # shots kept
    dropped_shots: int = 0
    dropped_header: bool = False
    truncated: int = 0  # tokens cut from the left (last resort)


class PromptBuilder:
    """Renders and tokenizes prompts, fitting them into ``max_length`` tokens.

    Completion mode tokenizes the whole prompt string after a BOS (as the official scripts do with
    a Llama tokenizer); chat mode renders Llama-3 messages with the generation prompt.
    """

    def __init__(self, fmt: MCQFormat, tokenizer, max_length: int, chat: bool = False) -> None:
        self.fmt = fmt
        self.tok = tokenizer
        self.max_length = max_length
        self.chat = chat
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self._encoder = None
        if chat:
            from zhilu.data.encode import ChatEncoder

            self._encoder = ChatEncoder(tokenizer, max_length=10**9)
        self._shot_len: dict[tuple[str, str], int] = {}

    def encode(self, subject: Subject, shots: list[Question], q: Question, header: bool = True) -> list[int]:
        if self._encoder is not None:
            return self._encoder.prompt(self.fmt.chat(subject, shots, q, header))
        return self.bos + self.tok.encode(self.fmt.completion(subject, shots, q, header), add_special_tokens=False)

    def shot_length(self, s: Question) -> int:
        key = (s.subject, s.qid)
        if key not in self._shot_len:
            self._shot_len[key] = len(self.tok.encode(self.fmt.example(s), add_special_tokens=False))
        return self._shot_len[key]

    def build(self, subject: Subject, shots: list[Question], q: Question) -> Prompt:
        kept = list(shots)
        ids = self.encode(subject, kept, q)
        while len(ids) > self.max_length and kept:
            longest = max(range(len(kept)), key=lambda i: (self.shot_length(kept[i]), i))
            del kept[longest]
            ids = self.encode(subject, kept, q)
        prompt = Prompt(ids=ids, shots=len(kept), dropped_shots=len(shots) - len(kept))
        if len(ids) > self.max_length:
            prompt.dropped_header = True
            ids = self.encode(subject, [], q, header=False)
        if len(ids) > self.max_length:
            keep = self.max_length - len(self.bos)
            prompt.truncated = len(ids) - self.max_length
            ids = self.bos + ids[len(ids) - keep:]
        prompt.ids = ids
        return prompt
