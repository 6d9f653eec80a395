"""Logger factories: W&B that runs offline unless credentials are configured."""

from __future__ import annotations

import netrc
import os
from pathlib import Path


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(offline: str | bool = "auto", save_dir: str = ".", **kwargs):
    """A ``WandbLogger``; ``offline=auto`` goes online only when an API key is configured."""
    from lightning.pytorch.loggers import WandbLogger

    if offline == "auto":
        offline = os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_credentials_present()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=bool(offline), save_dir=save_dir, **kwargs)



def resumable_csv_logger(save_dir: str, name: str = "csv", version: str | int | None = "", **kwargs):
    """Lightning's ``CSVLogger`` that keeps the run's history when the run resumes in the same folder
    (see :class:`KeepHistoryWriter`)."""
    from zhilu.utils.csv_history import KeepHistoryCSVLogger

    return KeepHistoryCSVLogger(save_dir=save_dir, name=name, version=version, **kwargs)
