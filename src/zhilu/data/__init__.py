"""Data: readers, chat encoding with assistant-only labels, packing, mixtures, and the DataModules.

The DataModules (which import Lightning) load lazily, so the command-line tools of this
package (``python -m zhilu.data.clean``) start fast.
"""

__all__ = ["ChatDataModule", "MixtureDataModule"]


def __getattr__(name: str):
    if name == "ChatDataModule":
        from zhilu.data.datamodule import ChatDataModule

        return ChatDataModule
    if name == "MixtureDataModule":
        from zhilu.data.mixture import MixtureDataModule

        return MixtureDataModule
    raise AttributeError(f"module 'zhilu.data' has no attribute {name!r}")
