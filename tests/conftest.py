"""Shared fixtures: compose the real configs, a tiny tokenizer, small data files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from zhilu.utils import resolvers  # noqa: F401 - the configs' resolvers

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ZHILU_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small model used by the fast tests (the real default is in conf/model/llama3_tiny.yaml).
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}

DIALOGUES = [
    [{"role": "system", "content": "你是金融助手。"},
     {"role": "user", "content": "信用卡的免息期是多久？"},
     {"role": "assistant", "content": "一般为20到56天，取决于消费日与账单日。"}],
    [{"role": "user", "content": "What is APR?"},
     {"role": "assistant", "content": "APR is the annual percentage rate, fees included."}],
    [{"role": "user", "content": "逾期记录保留多久？"},
     {"role": "assistant", "content": "自不良行为终止之日起保留5年。"},
     {"role": "user", "content": "可以删除吗？"},
     {"role": "assistant", "content": "真实的记录不能删除，声称能洗白征信的是诈骗。"}],
    [{"role": "user", "content": "有人要我先交解冻费才能放款，怎么办？"},
     {"role": "assistant", "content": "正规贷款放款前不收费，这是诈骗，请停止转账并报警。"}],
]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from zhilu.model import ModelBuilder

    return ModelBuilder(config=TINY).load_tokenizer()


@pytest.fixture
def sft_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    write_jsonl(d / "finance_sft" / "train.jsonl", [{"messages": m} for m in DIALOGUES * 4])
    write_jsonl(d / "finance_sft" / "val.jsonl", [{"messages": m} for m in DIALOGUES])
    return d


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """The real ``conf/train.yaml`` with overrides, as Hydra would build it for a run in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def fast_overrides(data_dir: Path, *extra: str) -> list[str]:
    """A few-second run: the small model, small data, CSV logging only."""
    model = [f"model.config.{k}={v}" for k, v in TINY.items()]
    return [f"paths.data_dir={data_dir}", "logger=csv", "data.batch_size=4", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", *model, *extra]
