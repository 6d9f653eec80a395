"""The training recipe: compose objects from the Hydra config, fit, export, report."""

from __future__ import annotations

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
    """``last`` means ``<output_dir>/checkpoints/last.ckpt`` (resume a crashed run in place)."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        p = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not p.is_file():
            log.warning("ckpt_path=last: no %s yet, starting fresh", p)
            return None
        return str(p)
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return ckpt_path


def build(cfg: DictConfig) -> dict[str, Any]:
    """Every object of a run, built but not run (also used by the tests that compose configs)."""
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


def train(cfg: DictConfig) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    objs = build(cfg)
    module, datamodule = objs["module"], objs["datamodule"]
    callbacks = instantiate_dict(cfg.get("callbacks"))
    loggers = instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    output_dir = cfg.paths.output_dir
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), output_dir))

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
