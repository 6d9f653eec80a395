"""The training recipe: compose objects from the Hydra config, fit, export, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zhilu.errors import ConfigError
from zhilu.train import compat
from zhilu.train.callbacks import RunMetrics
from zhilu.train.module import ZhiluModule

log = logging.getLogger(__name__)


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a mapping (callbacks, loggers); ``null`` entries skip."""
    if not cfg:
        return []
    return [instantiate(v) for v in cfg.values() if v is not None and "_target_" in v]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """``last`` means ``<output_dir>/checkpoints/last.ckpt`` (resume a crashed run in place) and is
    refused when there is none; ``last_if_any`` resumes from it when it exists, else starts fresh
    (a job script that is requeued after a preemption).

    A checkpoint is a file (a ``torch.save`` zip archive), or a directory for sharded engines (FSDP
    ``state_dict_type=sharded``: ``last.ckpt/`` with one shard file per rank and ``meta.pt``;
    DeepSpeed: ``checkpoint/`` and ``latest``). Anything else is refused before a model is built.
    """
    from zhilu.utils.atomic import recover_dir

    if not ckpt_path:
        return None
    if ckpt_path in ("last", "last_if_any"):
        p = Path(output_dir) / "checkpoints" / "last.ckpt"
        recover_dir(p)  # a kill between a sharded checkpoint's two renames
        if not p.exists():
            if ckpt_path == "last":
                raise ConfigError(f"ckpt_path=last: no checkpoint to resume from at {p} (ckpt_path=last_if_any "
                                  "starts fresh when there is none)")
            log.warning("ckpt_path=last_if_any: no %s yet, starting fresh", p)
            return None
        check_checkpoint(p, ckpt_path)
        return str(p)
    if not Path(ckpt_path).exists():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file or directory")
    check_checkpoint(Path(ckpt_path), ckpt_path)
    return ckpt_path


def check_checkpoint(p: Path, given: str) -> None:
    """Refuse what cannot be a Lightning checkpoint (without reading the weights)."""
    import zipfile

    if p.is_dir():
        if (p / "meta.pt").is_file() or any(p.glob("*.distcp")) or (p / "latest").is_file():
            return
        raise ConfigError(f"ckpt_path={given}: {p} is a directory but not a sharded checkpoint "
                          "(no meta.pt or *.distcp shards)")
    if not zipfile.is_zipfile(p):
        size = p.stat().st_size
        raise ConfigError(f"ckpt_path={given}: {p} is not a checkpoint ({size:,} bytes, not a torch.save archive"
                          f"{': empty' if size == 0 else '; truncated or another kind of file'})")


def build(cfg: DictConfig) -> dict[str, Any]:
    """Every object of a run, built but not run (also used by the tests that compose configs)."""
    from zhilu.train.checks import check_numbers

    check_numbers(cfg)
    builder = instantiate(cfg.model)
    tokenizer = builder.load_tokenizer()
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    adapter = instantiate(cfg.adapter)
    objective = instantiate(cfg.objective)
    compat.check(cfg, adapter, objective)
    if objective.data_kind != datamodule.kind:
        raise ConfigError(
            f"objective={type(objective).__name__} trains on {objective.data_kind} data but "
            f"data.kind={datamodule.kind} (choose a matching data= config)"
        )
    module = ZhiluModule(
        model=builder,
        adapter=adapter,
        objective=objective,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        tokenizer=tokenizer,
    )
    return {"builder": builder, "tokenizer": tokenizer, "datamodule": datamodule, "module": module}


# ---- issue 7 (ablations): a failed run is recorded, each run closes its own W&B run ----------
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one run. A crash leaves ``status: failed`` and the error in ``metrics.json`` (and re-raises);
    the W&B run is finished either way, so the next job of a multirun opens its own. The run dir is
    locked meanwhile: a second run in it is refused (and records nothing there)."""
    from zhilu.utils.rundir import run_dir_lock

    with run_dir_lock(cfg.paths.output_dir):
        try:
            results = _train(cfg)
        except BaseException as exc:
            finish_wandb(record_failure(cfg, exc))
            raise
        finish_wandb({})
        return results


def record_failure(cfg: DictConfig, exc: BaseException) -> dict[str, str]:
    """Merge ``status`` (``failed``, or ``interrupted`` for Ctrl-C/exit) and ``error`` into ``metrics.json``."""
    from zhilu.cli import user_error
    from zhilu.utils.io import write_json_atomic

    err = user_error(exc) or exc
    record = {"status": "failed" if isinstance(exc, Exception) else "interrupted",
              "error": f"{type(err).__name__}: {err}"[:4000]}
    try:
        path = Path(cfg.paths.output_dir) / "metrics.json"
    except Exception:  # no run dir (config composed outside Hydra)
        return record
    metrics = {}
    if path.is_file():
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass
    metrics.update(record)
    try:
        write_json_atomic(path, metrics)
    except OSError as write_error:  # e.g. the disk is full: the run's own error is the one to report
        log.error("could not record the failure in %s (%s)", path, write_error)
    log.error("run %s: %s (recorded in %s)", record["status"], (record["error"].splitlines() or [""])[0], path)
    return record


def finish_wandb(failure: dict[str, str]) -> None:
    """Lightning's ``WandbLogger`` never calls ``wandb.finish()``: without this, every later job of a
    multirun would log into the first job's W&B run. A failure goes into the run summary."""
    import sys

    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    if failure:
        run.summary.update(failure)
    wandb.finish(exit_code=1 if failure else 0)


class SweepJobFailed(RuntimeError):
    """A multirun job's user error, raised as a plain error (not ``sys.exit``) so the sweep goes on."""


def sweep_job_failure(exc: BaseException) -> SweepJobFailed | None:
    """In a multirun, the error to raise for a job that failed on a user error (``ZhiluError``).

    The entry points turn a ``ZhiluError`` into ``sys.exit(2)``, which would end a whole sweep. A
    plain exception is caught by Hydra's ``run_job`` instead: the basic sweeper runs the remaining
    jobs and exits non-zero at the end (``hydra.sweeper.max_batch_size=1`` stops at the first
    failure), the Optuna sweeper marks the trial failed and goes on (within ``max_failure_rate``).
    Other exceptions and single runs: ``None`` (raise as they are).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zhilu.cli import user_error

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # HydraConfig not set
        return None
    err = user_error(exc)
    if hydra_cfg.mode != RunMode.MULTIRUN or err is None:
        return None
    return SweepJobFailed(f"job {hydra_cfg.job.get('num')} ({hydra_cfg.runtime.output_dir}): {err}")


# ---- end issue 7 ------------------------------------------------------------------------------


def _train(cfg: DictConfig) -> dict[str, Any]:
    from zhilu.utils.saved_config import config_for_saving

    output_dir = cfg.paths.output_dir
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)  # before any model is built
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info("seed %s", cfg.seed)
    objs = build(cfg)
    module, datamodule = objs["module"], objs["datamodule"]
    datamodule.setup("fit")  # read and check the data now: a bad row stops the run before a trainer or model exists
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    saved = config_for_saving(cfg)  # ${oc.env:...} values stay unresolved, secret-named keys masked
    (Path(output_dir) / "config_resolved.yaml").write_text(OmegaConf.to_yaml(saved), encoding="utf-8")
    for lg in loggers:
        lg.log_hyperparams(saved)

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics_cb = next((c for c in callbacks if isinstance(c, RunMetrics)), None)
    results: dict[str, Any] = {}
    if cfg.get("validate_after_fit", True) and datamodule.val_examples:
        out = trainer.validate(module, datamodule=datamodule, verbose=False)
        results.update({k.replace("/", "_") + "_final": float(v) for k, v in (out[0] if out else {}).items()})
    if metrics_cb is not None:
        metrics_cb.update(trainer, **results)
        results = dict(metrics_cb.metrics)
    for lg in loggers:
        if hasattr(lg, "experiment") and hasattr(lg.experiment, "summary"):
            lg.experiment.summary.update({k: v for k, v in results.items() if isinstance(v, (int, float, str))})
    return results
