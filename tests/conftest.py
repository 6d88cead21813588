"""Session fixtures: real catalogue tokenizers on tiny random models (hidden 64, 2 layers)."""

from __future__ import annotations

import pytest
import torch

from xtok.models.catalogue import default_cache_dir

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512)


@pytest.fixture(scope="session")
def cache_dir():
    """The user's xtok cache: real tokenizers and converted models are extracted there once and reused."""
    return default_cache_dir()


@pytest.fixture(scope="session")
def real_tokenizer(cache_dir):
    """Factory: the real tokenizer of a catalogue model (needs requirements-models.txt installed)."""
    from xtok.models.load import load_tokenizer

    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load_tokenizer(name, cache_dir)
        return loaded[name]

    return get


def tiny_config(arch: str, vocab_size: int, tokenizer=None, **overrides):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    kwargs = dict(TINY, vocab_size=vocab_size, **overrides)
    if tokenizer is not None:
        kwargs.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        return LlamaConfig(tie_word_embeddings=kwargs.pop("tie_word_embeddings", True), **kwargs)
    if arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=kwargs.pop("tie_word_embeddings", False), **kwargs)
    if arch == "gemma3":
        return Gemma3TextConfig(head_dim=16, tie_word_embeddings=kwargs.pop("tie_word_embeddings", True), sliding_window=64,
                                    **kwargs)
    raise ValueError(arch)


CATALOGUE_ARCH = {"smollm2-135m": "llama", "qwen2.5-coder-0.5b": "qwen2", "gemma3-270m": "gemma3"}


def build_tiny(arch: str, tokenizer, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    vocab_size = overrides.pop("vocab_size", len(tokenizer))
    cfg = tiny_config(arch, vocab_size, tokenizer, **overrides)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_tokenizer):
    """Factory: a saved tiny random model carrying a catalogue model's real tokenizer (an HF folder)."""
    made = {}

    def get(name: str, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in made:
            tok = real_tokenizer(name)
            model = build_tiny(CATALOGUE_ARCH[name], tok, **overrides)
            out = tmp_path_factory.mktemp(f"tiny-{name}")
            model.save_pretrained(out)
            tok.save_pretrained(out)
            made[key] = out
        return made[key]

    return get
