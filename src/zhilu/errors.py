"""Errors that the command-line entry points report as one clear line (no traceback)."""


class ZhiluError(Exception):
    """Base class: an error caused by the user's input, reported as ``error: <message>``."""


class ConfigError(ZhiluError, ValueError):
    """An unknown or inconsistent configuration value."""


class DataError(ZhiluError, ValueError):
    """A malformed data file or row; the message names the file and line."""


class ModelPathError(ZhiluError, FileNotFoundError):
    """A model path that is missing or not a Hugging Face model folder."""
