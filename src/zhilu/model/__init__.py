"""Model and tokenizer construction: the embedded tiny Llama-3 and real weights from a local path."""

from zhilu.model.builder import ModelBuilder, resolve_model_path

__all__ = ["ModelBuilder", "resolve_model_path"]
