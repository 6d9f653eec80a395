"""Data: readers, chat encoding with assistant-only labels, packing, and the DataModule."""

from zhilu.data.datamodule import ChatDataModule

__all__ = ["ChatDataModule"]
