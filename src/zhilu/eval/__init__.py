"""C-Eval / CMMLU / FinEval and any multiple-choice folder: official and leaderboard prompts, letter
log-likelihood scoring, multi-answer questions by generation, leaderboard tables.

``python eval.py benchmark=ceval|cmmlu|fineval|mcq`` (``zhilu.eval.run``); during training
``python train.py callbacks=mcq_eval`` (``zhilu.eval.callback.MCQEvalCallback``).
"""

from zhilu.eval.benchmark import Benchmark, BenchmarkData
from zhilu.eval.loader import CsvLayout, JsonLayout, Question
from zhilu.eval.prompts import CEvalFormat, CMMLUFormat, FinEvalFormat, MCQFormat, PromptBuilder
from zhilu.eval.runner import EvalResult, evaluate, write_outputs
from zhilu.eval.scoring import GenerateScorer, LetterLoglikScorer, extract_choice, extract_choices

__all__ = ["Benchmark", "BenchmarkData", "CsvLayout", "JsonLayout", "Question", "MCQFormat", "CEvalFormat",
           "CMMLUFormat", "FinEvalFormat", "PromptBuilder", "EvalResult", "evaluate", "write_outputs", "LetterLoglikScorer",
           "GenerateScorer", "extract_choice", "extract_choices"]
