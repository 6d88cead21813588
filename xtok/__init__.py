"""xtok: cross-tokenizer tooling for pretrained LLMs."""

__version__ = "0.1.0"
