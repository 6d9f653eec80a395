"""Numbers in a training config that would fail deep inside a run (or silently train wrongly),
refused with one line naming the key before anything is built."""

from __future__ import annotations

from omegaconf import DictConfig

from zhilu.errors import ConfigError

# key: (smallest allowed value, whether null is allowed); null = the library default
POSITIVE_INTS = {
    "data.batch_size": (1, False),
    "data.eval_batch_size": (1, True),
    "data.max_length": (1, True),
    "data.pack_length": (1, True),
    "data.limit_train_samples": (1, True),  # 0 or -1 would silently keep no row or drop the last one
    "data.limit_val_samples": (0, True),
    "data.num_workers": (0, True),
    "trainer.accumulate_grad_batches": (1, True),
    "trainer.log_every_n_steps": (1, True),
    "trainer.max_steps": (-1, True),  # -1: no limit (Lightning)
    "trainer.num_nodes": (1, True),
}
NON_NEGATIVE = ("optimizer.lr", "optimizer.weight_decay", "trainer.gradient_clip_val", "scheduler.warmup_ratio",
                "scheduler.min_lr_ratio")


def _get(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        if node is None or not hasattr(node, "get"):
            return None
        node = node.get(part)
    return node


def check_numbers(cfg: DictConfig) -> None:
    for key, (low, nullable) in POSITIVE_INTS.items():
        value = _get(cfg, key)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}={value}: expected an integer >= {low}{' (or null)' if nullable else ''}")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{key}={value}: expected a number >= 0")
    lr = _get(cfg, "optimizer.lr")
    if lr == 0:
        raise ConfigError("optimizer.lr=0: nothing would train (expected a learning rate > 0)")
