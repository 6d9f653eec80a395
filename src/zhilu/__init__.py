"""zhilu: a Hydra-configured research codebase for the ZhiLu-2 consumer-finance recipe."""

__version__ = "0.1.0"
