"""Model loading: the bundled catalogue, GGUF conversion, and resolving any model spec."""

from xtok.models.catalogue import CATALOGUE, CatalogueModel, get_entry
from xtok.models.load import load_model, load_tokenizer, resolve_model, resolve_tokenizer

__all__ = [
    "CATALOGUE", "CatalogueModel", "get_entry", "load_model", "load_tokenizer", "resolve_model",
    "resolve_tokenizer",
]
