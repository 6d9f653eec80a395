"""Evaluate: ``python eval.py benchmark=ceval|cmmlu|fineval|mcq|safety [benchmark.data_dir=DIR] [model.path=RUN|EXPORT|HF]``.

``benchmark=mcq`` evaluates any multiple-choice folder (``benchmark.layout=ceval|cmmlu|jsonl``);
``benchmark.prompt_style=official|opencompass|lm_eval`` picks whose prompts to reproduce.
``benchmark=safety`` answers the project's held-out harmful and benign finance prompts and judges
the answers (``judge=rule``, the offline default, or ``judge=http``): see :mod:`zhilu.eval.safety`.

Scores C-Eval / CMMLU / FinEval with the official answer-only prompts (``benchmark.shots``,
``benchmark.chat``), by next-token letter log-likelihood (``mode=loglik``) or greedy generation +
answer extraction (``mode=generate``), and writes predictions, per-subject accuracy,
``results.json`` and ``table.md`` into the run dir. Without ``model.path`` it evaluates the
untrained embedded default (near 25%: the chance level).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from zhilu.cli import one_line_errors, set_project_root

set_project_root(Path(__file__).resolve().parent)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    from zhilu.eval.run import run

    summary = run(cfg)
    # what a sweeper optimises: the MCQ average, or the benchmark's own metric (safety: harmful compliance %)
    return summary["metric"] if "metric" in summary else summary["accuracy"].get("avg")


if __name__ == "__main__":
    main()
