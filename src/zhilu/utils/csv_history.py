"""A CSV logger whose ``metrics.csv`` covers the whole run across resumes.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so a resumed run kept only
the steps after its checkpoint. ``KeepHistoryWriter`` keeps the file and, at its first write, drops
the rows from the first newly logged step on (steps that ran after the checkpoint the run resumed
from and are being redone), so each step appears once.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


def _step(row: dict) -> float | None:
    try:
        return float(row.get("step"))
    except (TypeError, ValueError):
        return None


class KeepHistoryWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # called by the parent's __init__: keep metrics.csv
        self._carried: list[dict] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                self._carried = list(reader)
                self.metrics_keys = list(reader.fieldnames or [])

    def save(self) -> None:
        carried = getattr(self, "_carried", None)
        if carried is not None and self.metrics:
            self._carried = None
            first = min(float(m["step"]) for m in self.metrics)
            kept = [r for r in carried if (_step(r) is not None and _step(r) < first)]
            if len(kept) != len(carried):  # rewrite without the redone steps
                with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                    writer.writeheader()
                    writer.writerows(kept)
        super().save()


class KeepHistoryCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> KeepHistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepHistoryWriter(log_dir=self.log_dir)
        return self._experiment
