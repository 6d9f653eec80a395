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

Leaderboard styles (``benchmark.prompt_style``): ``official`` (above), ``opencompass`` and
``lm_eval`` reproduce those tools' C-Eval / CMMLU prompt texts character for character (sources in
``conf/benchmark/{ceval,cmmlu}.yaml``): OpenCompass repeats the instruction in every example and
joins the human and bot turns with ``\\n`` (its ``LMTemplateParser`` without a meta template);
lm-evaluation-harness puts a space before the answer letter (``target_delimiter``) and adds no BOS.

Over-long prompts (``shot_fit``) follow each tool's own code:

- ``cmmlu``: CMMLU ``src/mp_utils.py`` ``gen_prompt`` (haonan-li/CMMLU@0b27e9f): the header and the
  question are encoded separately (``tokenizer.encode``, special tokens included); if they alone
  exceed the budget the prompt is the bare question; otherwise, while the separately encoded shots
  sum to ``>= max_length - (header + question)``, *every* shot of the longest length is removed.
- ``last``: OpenCompass ``PPLInferencer`` (open-compass/opencompass@2074493): drop the last shot
  while the prompt with its answer is longer than ``max_seq_len`` tokens.
- ``truncate``: lm-evaluation-harness ``HFLM._loglikelihood_tokens`` (EleutherAI@0068151): no shot
  is dropped; the context is cut from the left to the last ``max_length`` tokens.
- ``longest`` (C-Eval, FinEval: neither hkust-nlp/ceval ``evaluators/llama.py`` (@802229f) nor FinEval
  ``evaluators/unify_evaluator.py`` (SUFE-AIFLM-Lab/FinEval@b5773e6) ever drops a shot, so a
  prompt longer than the context cannot run there): the longest shot (the later one on ties) is
  dropped, one at a time, until the jointly encoded prompt fits.

Then, for the dropping rules, the header goes, and as a last resort the prompt is cut from the
left (BOS kept). Every prompt reports what was dropped.

Option and question texts are used exactly as stored in the file (the official scripts read
them with pandas, which would print an option ``0.10`` as ``0.1``). Questions of other shapes
(``benchmark=mcq``): 2..N options lettered ``A``.., several correct letters (a shot shows ``ABD``),
true/false; the header's ``{qtype_zh}`` names the question type (单项选择题 / 多项选择题 / 判断题).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zhilu.errors import ConfigError
from zhilu.eval.loader import ALL_LETTERS, MULTI, SINGLE, TRUE_FALSE, Question
from zhilu.eval.subjects import Subject

SHOT_FITS = ("longest", "cmmlu", "last", "truncate")
TYPE_NAMES_ZH = {SINGLE: "单项选择题", MULTI: "多项选择题", TRUE_FALSE: "判断题"}


@dataclass
class MCQFormat:
    """An answer-only multiple-choice prompt format (fields are plain templates, overridable in YAML).

    Args:
        header: instruction before the examples; ``{subject_zh}``, ``{subject_en}``, ``{subject}``,
            ``{qtype_zh}`` (单项选择题 / 多项选择题 / 判断题).
        zero_shot_header: whether the header is also used without shots.
        question_prefix: text before each question.
        option_format: one option line (``{letter}``, ``{text}``).
        answer_prefix: text after the options, before the answer (the context ends here).
        choice_prefix: text between ``answer_prefix`` and the answer letter (lm_eval: a space).
        example_end: text after a shot's answer.
        header_per_example: the header starts every example instead of the prompt (OpenCompass).
        zero_shot_lead: text that starts a prompt without shots (OpenCompass: its empty in-context
            slot still emits the ``\\n`` separator).
        strip_question: strip the question text (lm_eval's ``question.strip()``).
        bos: start completion prompts with the tokenizer's BOS (lm_eval encodes without it).
        shot_fit: how over-long prompts lose shots: ``longest`` | ``cmmlu`` | ``last`` | ``truncate``.
        chat_multi_turn: chat mode with one user/assistant exchange per shot and the header as
            system message (C-Eval tutorial); otherwise the completion prompt is one user message.
        type_names: the ``{qtype_zh}`` text per question type.
    """

    header: str = "以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。\n\n"
    zero_shot_header: bool = True
    question_prefix: str = ""
    option_format: str = "\n{letter}. {text}"
    answer_prefix: str = "\n答案："
    choice_prefix: str = ""
    example_end: str = "\n\n"
    header_per_example: bool = False
    zero_shot_lead: str = ""
    strip_question: bool = False
    bos: bool = True
    shot_fit: str = "longest"
    chat_multi_turn: bool = True
    type_names: dict[str, str] = field(default_factory=lambda: dict(TYPE_NAMES_ZH))

    def __post_init__(self) -> None:
        if self.shot_fit not in SHOT_FITS:
            raise ConfigError(f"format.shot_fit={self.shot_fit!r}: expected one of {', '.join(SHOT_FITS)}")

    def _header(self, subject: Subject, qtype: str) -> str:
        return self.header.format(subject_zh=subject.name_zh, subject_en=subject.name_en, subject=subject.name,
                                  qtype_zh=(self.type_names or TYPE_NAMES_ZH).get(qtype, TYPE_NAMES_ZH[SINGLE]))

    def head(self, subject: Subject, n_shots: int, qtype: str = SINGLE) -> str:
        if self.header_per_example or (n_shots == 0 and not self.zero_shot_header):
            return ""
        return self._header(subject, qtype)

    def question(self, q: Question, subject: Subject | None = None) -> str:
        """The question with its options, ending with the answer prefix (``答案：``)."""
        text = self._header(subject, q.qtype) if self.header_per_example and subject is not None else ""
        text += self.question_prefix + (q.question.strip() if self.strip_question else q.question)
        for letter, option in zip(ALL_LETTERS, q.options):
            text += self.option_format.format(letter=letter, text=option)
        return text + self.answer_prefix

    def example(self, q: Question, subject: Subject | None = None) -> str:
        """A solved shot: the question, its answer letter(s) and the separator."""
        return self.question(q, subject) + self.choice_prefix + f"{q.answer}" + self.example_end

    def completion(self, subject: Subject, shots: list[Question], q: Question, header: bool = True) -> str:
        """The whole prompt text, up to (not including) the answer's ``choice_prefix`` + letter."""
        head = self.head(subject, len(shots), q.qtype) if header else ""
        lead = self.zero_shot_lead if not shots else ""
        return head + lead + "".join(self.example(s, subject) for s in shots) + self.question(q, subject)

    def chat(self, subject: Subject, shots: list[Question], q: Question, header: bool = True) -> list[dict]:
        if not self.chat_multi_turn:
            return [{"role": "user", "content": self.completion(subject, shots, q, header)}]
        head = self.head(subject, len(shots), q.qtype).strip() if header else ""
        messages = [{"role": "system", "content": head}] if head else []
        for s in shots:
            messages += [{"role": "user", "content": self.question(s, subject)},
                         {"role": "assistant", "content": f"{s.answer}"}]
        return messages + [{"role": "user", "content": self.question(q, subject)}]


@dataclass
class CEvalFormat(MCQFormat):
    """C-Eval answer-only (hkust-nlp/ceval ``evaluators/llama.py``, ``resources/tutorial.md``)."""


@dataclass
class CMMLUFormat(MCQFormat):
    """CMMLU answer-only (haonan-li/CMMLU ``src/mp_utils.py``; chat as in ``src/llama3.py``)."""

    header: str = "以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\n\n"
    question_prefix: str = "题目："
    answer_prefix: str = "\n答案是："
    shot_fit: str = "cmmlu"
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
    choices: list[int] | None = None  # token ids of the question's answer letters (letter scoring)


class PromptBuilder:
    """Renders and tokenizes prompts, fitting them into ``max_length`` tokens.

    Completion mode tokenizes the whole prompt string after a BOS (as the official scripts do with
    a Llama tokenizer; no BOS where the format says so); chat mode renders Llama-3 messages with the
    generation prompt.
    """

    def __init__(self, fmt: MCQFormat, tokenizer, max_length: int, chat: bool = False) -> None:
        self.fmt = fmt
        self.tok = tokenizer
        self.max_length = max_length
        self.chat = chat
        has_bos = tokenizer.bos_token_id is not None
        self.bos = [tokenizer.bos_token_id] if has_bos and (fmt.bos or chat) else []
        self._prompt = None
        if chat:
            from zhilu.model.runtime import GenerationPrompt

            self._prompt = GenerationPrompt(tokenizer)
        self._shot_len: dict[tuple[str, str], int] = {}
        self._choice_ids: dict[int, list[int]] = {}

    def encode(self, subject: Subject, shots: list[Question], q: Question, header: bool = True) -> list[int]:
        if self._prompt is not None:
            return self._prompt(self.fmt.chat(subject, shots, q, header))
        return self.bos + self.tok.encode(self.fmt.completion(subject, shots, q, header), add_special_tokens=False)

    def choice_ids(self, q: Question) -> list[int]:
        """The token of ``choice_prefix + letter`` for each of the question's letters (each must be
        one token: the scorer reads the next-token distribution after the prompt)."""
        n = len(q.options)
        if n not in self._choice_ids:
            ids = []
            for letter in ALL_LETTERS[:n]:
                text = self.fmt.choice_prefix + letter
                toks = self.tok.encode(text, add_special_tokens=False)
                if len(toks) != 1:
                    raise ConfigError(f"tokenizer: answer {text!r} is not a single token ({toks})")
                ids.append(toks[0])
            self._choice_ids[n] = ids
        return self._choice_ids[n]

    def shot_length(self, s: Question, subject: Subject | None = None) -> int:
        key = (s.subject, s.qid)
        if key not in self._shot_len:
            self._shot_len[key] = len(self.tok.encode(self.fmt.example(s, subject), add_special_tokens=False))
        return self._shot_len[key]

    def build(self, subject: Subject, shots: list[Question], q: Question) -> Prompt:
        fit = self.fmt.shot_fit
        kept = list(shots)
        dropped_header = False
        if fit == "cmmlu":
            kept, dropped_header = self._fit_cmmlu(subject, kept, q)
            ids = self.encode(subject, kept, q, header=not dropped_header)
        elif fit == "last":
            ids = self.encode(subject, kept, q)
            while kept and len(ids) + 1 > self.max_length:  # OpenCompass counts the answer token too
                kept.pop()
                ids = self.encode(subject, kept, q)
        elif fit == "longest":
            ids = self.encode(subject, kept, q)
            while len(ids) > self.max_length and kept:
                longest = max(range(len(kept)), key=lambda i: (self.shot_length(kept[i], subject), i))
                del kept[longest]
                ids = self.encode(subject, kept, q)
        else:  # truncate: lm_eval keeps every shot and cuts the context from the left
            ids = self.encode(subject, kept, q)
        prompt = Prompt(ids=ids, shots=len(kept), dropped_shots=len(shots) - len(kept), dropped_header=dropped_header)
        if fit != "truncate" and len(ids) > self.max_length and not prompt.dropped_header:
            prompt.dropped_header = True
            ids = self.encode(subject, [] if fit != "truncate" else kept, q, header=False)
            prompt.shots, prompt.dropped_shots = 0, len(shots)
        if len(ids) > self.max_length:
            bos = self.bos if fit != "truncate" else []
            keep = self.max_length - len(bos)
            prompt.truncated = len(ids) - self.max_length
            ids = bos + ids[len(ids) - keep:]
        prompt.ids = ids
        return prompt

    def _fit_cmmlu(self, subject: Subject, shots: list[Question], q: Question) -> tuple[list[Question], bool]:
        """CMMLU ``gen_prompt``: separate ``tokenizer.encode`` counts (special tokens included)."""
        enc = self.tok.encode
        start_end = len(enc(self.fmt.head(subject, len(shots), q.qtype))) + len(enc(self.fmt.question(q, subject)))
        if start_end > self.max_length:
            return [], True
        sized = [(s, len(enc(self.fmt.example(s, subject)))) for s in shots]
        while sized and sum(n for _, n in sized) >= self.max_length - start_end:
            longest = max(n for _, n in sized)
            sized = [(s, n) for s, n in sized if n != longest]
        return [s for s, _ in sized], False
