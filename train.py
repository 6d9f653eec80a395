"""Train: ``python train.py [adapter=dora] [objective=sft|dpo] [key=value ...]``.

Composes ``conf/train.yaml``, builds every object with ``hydra.utils.instantiate``, fits,
exports, and returns the metric that a Hydra sweeper optimises (``optimized_metric``).
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from zhilu.cli import one_line_errors, set_project_root

set_project_root(Path(__file__).resolve().parent)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    from zhilu.train.run import sweep_job_failure, train

    try:
        metrics = train(cfg)
    except Exception as exc:
        failure = sweep_job_failure(exc)  # multirun: a plain error, so the sweeper records it and goes on
        if failure is None:
            raise
    else:
        name = cfg.get("optimized_metric")
        return metrics.get(name) if name else None
    raise failure


if __name__ == "__main__":
    main()
