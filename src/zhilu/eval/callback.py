"""C-Eval / CMMLU letter scoring during training (``python train.py callbacks=mcq_eval``).

At the end of every ``every_n_validations``-th validation (sanity checks excluded) the live model
(adapters included) is scored on a small benchmark subset; the group accuracies are logged as
``val/<benchmark>_<group>`` (percent; they land in ``metrics.json`` via ``RunMetrics``) and the
full outputs go to ``<run dir>/mcq_eval/<benchmark>_step<step>/``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L

from zhilu.eval.benchmark import Benchmark, BenchmarkData
from zhilu.eval.runner import evaluate, write_outputs

log = logging.getLogger(__name__)


def metric_key(benchmark: str, group: str) -> str:
    return f"val/{benchmark}_" + re.sub(r"[^0-9a-z]+", "_", group.lower()).strip("_")


class MCQEvalCallback(L.Callback):
    """Args:
        benchmark: a :class:`~zhilu.eval.benchmark.Benchmark` (keep it small: ``subjects``, ``limit``).
        scorer: a scorer (``LetterLoglikScorer``).
        output_dir: the run dir (outputs under ``mcq_eval/``); ``None`` writes nothing.
        every_n_validations: evaluate at every n-th validation.
    """

    def __init__(self, benchmark: Benchmark, scorer, output_dir: str | None = None,
                 every_n_validations: int = 1) -> None:
        self.benchmark = benchmark
        self.scorer = scorer
        self.output_dir = output_dir
        self.every = max(1, int(every_n_validations))
        self._data: BenchmarkData | None = None
        self._validations = 0
        self.last_result = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._data is None:
            self._data = self.benchmark.load()  # a bad data dir fails before training starts
            log.info("mcq_eval: %s %s, %d questions in %d subjects", self.benchmark.name, self.benchmark.split,
                     self._data.num_questions, len(self._data.subjects))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every:
            return
        result = evaluate(self.benchmark, pl_module.model, pl_module.tokenizer, self.scorer,
                          model_name=f"step {trainer.global_step}", data=self._data)
        self.last_result = result
        for group, value in result.groups.items():
            if value is not None and (group in self.benchmark.table.values()):
                pl_module.log(metric_key(self.benchmark.name, group), value, batch_size=1)
        if self.output_dir and trainer.is_global_zero:
            out = Path(self.output_dir) / "mcq_eval" / f"{self.benchmark.name}_step{trainer.global_step:06d}"
            write_outputs(result, out)
        log.info("mcq_eval step %d:\n%s", trainer.global_step, result.table)
