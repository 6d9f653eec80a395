"""Training objectives (SFT, DPO and its relatives, KTO), each a small object chosen by ``objective=``."""

from zhilu.objectives.base import Objective
from zhilu.objectives.dpo import DPO
from zhilu.objectives.kto import KTO
from zhilu.objectives.sft import SFT

__all__ = ["DPO", "KTO", "Objective", "SFT"]
