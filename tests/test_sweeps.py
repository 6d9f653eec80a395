"""The method ablation: experiment config, Hydra multirun, W&B sweep files, Optuna and SLURM configs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import ROOT, TINY, compose_train, fast_overrides
from zhilu.report import build_table, find_run_dirs, load_run
from zhilu.train.run import build, train

ADAPTERS = ["full", "lora", "loraplus", "dora", "badam"]
SWEEPS = ROOT / "sweeps"
TINY_MODEL = [f"model.config.{k}={v}" for k, v in TINY.items()]


# ------------------------------------------------------------------ experiment
def test_method_ablation_sweeps_every_adapter_with_the_same_settings(tmp_path):
    cfg = compose_train(["experiment=method_ablation"], tmp_path)
    params = cfg.hydra.sweeper.params
    assert params.adapter.split(",") == ADAPTERS and len(params.seed.split(",")) >= 2
    assert {"gen_speed", "train_cost", "mcq_eval", "run_metrics", "export"} <= set(cfg.callbacks)

    def shared(adapter: str) -> dict:
        c = compose_train(["experiment=method_ablation", f"adapter={adapter}"], tmp_path)
        assert c.hydra.runtime.choices.adapter == adapter
        keep = ("data", "trainer", "optimizer", "scheduler", "seed", "model", "objective", "callbacks")
        return {k: OmegaConf.to_container(c[k]) if OmegaConf.is_config(c[k]) else c[k] for k in keep}

    first = shared(ADAPTERS[0])
    for adapter in ADAPTERS[1:]:
        assert shared(adapter) == first, adapter  # only the adapter differs between methods


# ----------------------------------------------------------------- W&B sweeps
def expand_wandb_command(sweep: dict, args: dict) -> list[str]:
    """The command ``wandb agent`` runs for one parameter set (wandb's own argument formatting)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in args.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    out = []
    for part in sweep["command"]:
        out += macros[part[2:-1]] if part.startswith("${") else [part]
    return out


def parameter_sets(sweep: dict) -> list[dict]:
    """Every grid point; for distributions, both ends of the range."""
    axes = {}
    for name, spec in sweep["parameters"].items():
        if "value" in spec:
            axes[name] = [spec["value"]]
        elif "values" in spec:
            axes[name] = spec["values"]
        else:
            axes[name] = [spec["min"], spec["max"]]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


@pytest.mark.parametrize("name", ["method_ablation", "lora_bayes"])
def test_wandb_sweep_file_runs_train_py_with_hydra_overrides(name, tmp_path, sft_dir):
    pytest.importorskip("wandb")
    sweep = yaml.safe_load((SWEEPS / f"{name}.yaml").read_text())
    assert sweep["program"] == "train.py" and (ROOT / sweep["program"]).is_file()
    assert sweep["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    assert sweep["method"] in ("grid", "bayes", "random") and sweep["metric"]["name"] == "val_loss_final"
    sets = parameter_sets(sweep)
    assert len(sets) == 10  # 5 adapters x 2 seeds; 2 ends of the lr range x 5 ranks
    for i, args in enumerate(sets):
        cmd = expand_wandb_command(sweep, args)
        assert cmd[:3] == ["/usr/bin/env", "python", "train.py"]
        overrides = cmd[3:]
        assert overrides and not any(o.startswith("-") for o in overrides)
        cfg = compose_train(overrides + [f"paths.data_dir={sft_dir}", "logger=csv", *TINY_MODEL], tmp_path / str(i))
        for key, value in args.items():
            if key in ("experiment", "adapter"):
                assert cfg.hydra.runtime.choices[key] == value
            else:
                assert OmegaConf.select(cfg, key) == pytest.approx(value), key
        if i == len(sets) - 1:  # and every object builds, for one parameter set
            objs = build(cfg)
            assert objs["module"].adapter.name == args["adapter"]


# ---------------------------------------------------------- Optuna and SLURM
def test_optuna_search_composes_over_lr_and_rank(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = compose_train(["hparams_search=lora_optuna"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_.endswith("TPESampler")
    assert cfg.hydra.mode == RunMode.MULTIRUN and sweeper.direction == "minimize"
    assert cfg.optimized_metric == "val_loss_final"
    assert set(sweeper.params) == {"optimizer.lr", "adapter.r"}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    dists = {o.key_or_group: create_optuna_distribution_from_override(o) for o in parsed}
    lr, r = dists["optimizer.lr"], dists["adapter.r"]
    assert (type(lr).__name__, lr.low, lr.high) == ("LogUniformDistribution", 1e-5, 3e-3)
    assert list(r.choices) == [4, 8, 16, 32, 64]
    assert instantiate(cfg.adapter).name == "lora"
    dora = compose_train(["hparams_search=lora_optuna", "adapter=dora"], tmp_path)
    assert instantiate(dora.adapter).name == "dora"  # the search's adapter is a default, not a lock


def test_slurm_launcher_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_train(["experiment=method_ablation", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                        tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1


# ---------------------------------------------------------- failed runs
class Boom(L.Callback):
    """Raises at the start of the second training step (after a validation wrote metrics.json)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            raise RuntimeError("boom at step 1")


def test_a_crash_in_fit_keeps_the_last_record_and_marks_it_failed(tmp_path, sft_dir):
    cfg = compose_train(fast_overrides(sft_dir, "adapter=lora", "trainer.max_steps=3", "trainer.val_check_interval=1",
                                       "trainer.limit_val_batches=1", "callbacks.model_checkpoint=null",
                                       "+callbacks.boom._target_=tests.test_sweeps.Boom"), tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "RuntimeError: boom at step 1"
    assert metrics["adapter"] == "lora" and "val_loss" in metrics  # what the validation at step 1 recorded
    (row,) = build_table([load_run(tmp_path)]).rows
    assert row.status == "failed"


def test_a_config_error_is_recorded_too(tmp_path, sft_dir):
    cfg = compose_train(fast_overrides(sft_dir, "adapter=lora", "adapter.r=0"), tmp_path)
    with pytest.raises(Exception):
        train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"status": "failed", "error": "ConfigError: adapter.r=0: must be a positive integer"}


# -------------------------------------------------------------- the multirun
def fast_ablation(tmp_path: Path, sft_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``experiment=method_ablation`` as a Hydra multirun: small model and data, a few steps."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=method_ablation",
            "trainer.max_steps=3", "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1",
            "data.limit_train_samples=24", "data.limit_val_samples=8", "data.batch_size=4",
            f"paths.data_dir={sft_dir}", f"hydra.sweep.dir={tmp_path}/sweep", "trainer.enable_progress_bar=false",
            f"callbacks.mcq_eval.benchmark.data_dir={ROOT}/tests/data/cmmlu_tiny",
            "callbacks.mcq_eval.benchmark.subjects=[anatomy,arts]", "callbacks.mcq_eval.benchmark.limit=2",
            "callbacks.gen_speed.max_new_tokens=2", "callbacks.gen_speed.warmup=0", "callbacks.gen_speed.repeats=1",
            "callbacks.gen_speed.prompts=['信用卡','APR']",
            "callbacks.export.enabled=false", *TINY_MODEL, *extra]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)


def test_multirun_over_every_adapter_then_the_report(tmp_path, sft_dir):
    # a sixth method that fails when it builds (tests/conf/adapter/broken.yaml), between two good ones
    r = fast_ablation(tmp_path, sft_dir, "adapter=full,lora,broken,loraplus,dora,badam", "seed=0", "logger=wandb",
                      f"hydra.searchpath=[file://{ROOT}/tests/conf]")
    assert r.returncode == 1, r.stderr[-3000:]  # the sweep ran every job, then reported the failure
    assert "adapter.r=0: must be a positive integer" in r.stderr
    dirs = find_run_dirs([tmp_path / "sweep"])
    assert [d.name for d in dirs] == [f"{i}_{a}_seed0" for i, a in
                                      enumerate(["full", "lora", "broken", "loraplus", "dora", "badam"])]
    state = {}
    for d in dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        if "broken" in d.name:
            assert metrics["status"] == "failed" and "adapter.r=0" in metrics["error"]
            continue
        assert metrics["status"] == "finished" and metrics["global_step"] == 3
        assert metrics["gen_new_tokens"] == 4 and metrics["gen_merged_agreement"] == 1.0
        assert 0 <= metrics["val_cmmlu_avg_final"] <= 100
        assert metrics["train_cpu_time_s"] > 0 and metrics["train_peak_memory_mb"] > 0
        assert 0 <= metrics["train_memory_over_start_mb"] <= metrics["train_peak_memory_mb"]
        state[d.name.split("_")[1]] = metrics["train_state_mb"]
        # each job logs into its own W&B run (Lightning never finishes them; train() does)
        assert len(list((d / "wandb").glob("offline-run-*"))) == 1, d

    # full FT keeps a gradient and two Adam moments for every weight; the adapters far less
    assert state["full"] > 2 * max(state["lora"], state["dora"]) and state["full"] > state["badam"]
    assert state["lora"] == state["loraplus"] < state["dora"]  # DoRA adds the magnitude vectors
    table = build_table([load_run(d) for d in dirs])
    rows = {row.method: row for row in table.rows}
    assert list(rows) == ["full", "lora", "broken", "loraplus", "dora", "badam"]
    assert rows["broken"].status == "failed"
    for a in ADAPTERS:
        assert rows[a].status == "ok"
        for col in table.columns:
            assert rows[a].cells[col.name].mean is not None, (a, col.name)
    names = {c.name for c in table.columns}
    assert {"train_time_s", "train_cpu_time_s", "peak_memory_mb", "memory_over_start_mb", "gen_tokens_per_s_merged",
            "gen_speedup_merged", "val_loss", "cmmlu_avg"} <= names
    trainable = {a: rows[a].cells["trainable_params"].mean for a in ADAPTERS}
    assert trainable["full"] > trainable["badam"] > 0 and trainable["dora"] > trainable["lora"]


@pytest.mark.slow
def test_optuna_search_runs_trials(tmp_path, sft_dir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = [sys.executable, str(ROOT / "train.py"), "hparams_search=lora_optuna", "debug=fast",
            "trainer.max_steps=2", "hydra.sweeper.n_trials=2", f"paths.data_dir={sft_dir}",
            f"hydra.sweep.dir={tmp_path}/sweep", "trainer.enable_progress_bar=false", *TINY_MODEL]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "adapter.r"}
    values = [json.loads((d / "metrics.json").read_text())["val_loss_final"]
              for d in find_run_dirs([tmp_path / "sweep"])]
    assert len(values) == 2 and best["best_value"] == pytest.approx(min(values))
