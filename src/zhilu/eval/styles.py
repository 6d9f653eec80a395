"""Leaderboard prompt styles: OpenCompass's and lm-evaluation-harness's C-Eval / CMMLU prompts.

The three tools prompt differently, so their numbers are not comparable; ``benchmark.prompt_style``
picks one (``official`` is :mod:`zhilu.eval.prompts`). The texts below reproduce each tool's
rendering for a base model, character for character (own implementation from their configs):

OpenCompass, perplexity configs (the ones that score letters like ``mode=loglik``)
``opencompass/configs/datasets/ceval/ceval_ppl_578f8d.py`` and
``opencompass/configs/datasets/cmmlu/cmmlu_ppl_8b9c76.py`` (open-compass/opencompass@3ce9b0a):
a HUMAN turn ``以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n{question}\\nA. {A}...\\n答案: ``
(CMMLU: ``以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n题目：{question}\\nA. {A}...\\nD. {D}``)
and a BOT turn ``{answer}`` (CMMLU: ``答案是: {answer}``), 5 shots by ``FixKRetriever`` (dev rows
0-4). Without a meta template ``LMTemplateParser.parse_template`` (``opencompass/models/base.py``)
joins every turn with ``\\n``, including the empty in-context slot of a zero-shot prompt, which
therefore starts with ``\\n``; the meta-template ice separators are empty
(``icl_base_retriever.py``). The perplexity of ``prompt + letter`` is compared across letters;
all tokens but the letter are shared, so the lowest perplexity is the highest letter
log-likelihood read after ``答案: \\n`` (CMMLU: ``答案是:`` then the token `` A``). HF models
tokenize with the BOS. Over-long prompts lose their last shot first (``PPLInferencer``).

lm-evaluation-harness ``lm_eval/tasks/ceval/_default_ceval_yaml`` (EleutherAI@517aadc) and
``lm_eval/tasks/cmmlu/_default_template_yaml`` (EleutherAI@0d03a9f): ``doc_to_text``
``{{question.strip()}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\n答案：``, choices ``A``..``D``
continued after the default ``target_delimiter`` (a space: the token `` A``), shots ``first_n``
from dev joined by ``\\n\\n``; the description from ``_generate_configs.py`` (C-Eval, EleutherAI@2041dc3:
``以下是中国关于{科目}的单项选择题，请选出其中的正确答案。\\n\\n`` (no 考试, unlike the official
header); CMMLU, EleutherAI@5c58524: ``以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n\\n``).
``HFLM`` encodes causal-LM contexts without special tokens (no BOS) and cuts over-long contexts
from the left (``lm_eval/models/huggingface.py``, EleutherAI@0068151).
"""

from __future__ import annotations

from dataclasses import dataclass

from zhilu.eval.prompts import MCQFormat


@dataclass
class OpenCompassCEvalFormat(MCQFormat):
    """OpenCompass ``ceval_ppl_578f8d.py`` as its template parser renders it for a base model."""

    header: str = "以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。\n"
    header_per_example: bool = True
    answer_prefix: str = "\n答案: \n"
    example_end: str = "\n"
    zero_shot_lead: str = "\n"
    shot_fit: str = "last"
    chat_multi_turn: bool = False


@dataclass
class OpenCompassCMMLUFormat(OpenCompassCEvalFormat):
    """OpenCompass ``cmmlu_ppl_8b9c76.py`` as its template parser renders it for a base model."""

    header: str = "以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\n"
    question_prefix: str = "题目："
    answer_prefix: str = "\n答案是:"
    choice_prefix: str = " "


@dataclass
class LmEvalCEvalFormat(MCQFormat):
    """lm-evaluation-harness ``ceval-valid_*`` tasks (``_default_ceval_yaml``, ``_generate_configs.py``)."""

    header: str = "以下是中国关于{subject_zh}的单项选择题，请选出其中的正确答案。\n\n"
    strip_question: bool = True
    choice_prefix: str = " "
    bos: bool = False
    shot_fit: str = "truncate"
    chat_multi_turn: bool = False


@dataclass
class LmEvalCMMLUFormat(LmEvalCEvalFormat):
    """lm-evaluation-harness ``cmmlu_*`` tasks (``_default_template_yaml``, ``_generate_configs.py``)."""

    header: str = "以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\n\n"
