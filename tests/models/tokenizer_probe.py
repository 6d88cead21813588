"""Probe texts for the catalogue tokenizers, and the writer of tests/assets/tokenizer_probe_ids.json.

The stored ids were produced with this module under transformers 5.19.0 and 5.23.0 (the two gave
the same ids) and are checked by tests/models/test_tokenizer_probe.py. To write them again:

    python -m tests.models.tokenizer_probe CACHE_DIR [--check]

(an empty CACHE_DIR builds each tokenizer from its GGUF package; --check compares instead of writing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ASSET = Path(__file__).resolve().parent.parent / "assets" / "tokenizer_probe_ids.json"
MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m")
PROBES = {
    "prose": "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "code": 'def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\tprint(f"{fib(10)=}")  # tabs & {braces}\n',
    "digits": "1234 + 5678 = 6912; 3.14159e-10, 0x1F, 2026-12-01, 1000000",
    "multilingual": "Où est la gare? Straße. 東京は日本の首都です。Привет, мир! مرحبا بالعالم 🙂",
    "whitespace": "  two leading spaces,\n\n\nthree newlines and trailing  ",
}
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
]


def probe(tokenizer) -> dict:
    """Everything about ``tokenizer`` that the stored ids pin down."""
    out = {
        "special_ids": {r: getattr(tokenizer, f"{r}_id") for r in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "ids": {name: tokenizer(text)["input_ids"] for name, text in PROBES.items()},
        "chat": None,
    }
    if tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
        out["chat"] = {"text": rendered, "ids": tokenizer(rendered, add_special_tokens=False)["input_ids"]}
    return out


def main(argv: list[str]) -> int:
    import transformers

    from xtok.models.load import load_tokenizer

    cache, check = Path(argv[0]), "--check" in argv
    got = {name: probe(load_tokenizer(name, cache)) for name in MODELS}
    if check:
        stored = json.loads(ASSET.read_text(encoding="utf-8"))["models"]
        bad = [name for name in MODELS if stored[name] != got[name]]
        print(f"transformers {transformers.__version__}: " + (f"DIFFERENT for {bad}" if bad else "same ids as stored"))
        return 1 if bad else 0
    ASSET.parent.mkdir(parents=True, exist_ok=True)
    doc = {"note": "ids from tests/models/tokenizer_probe.py; the same under transformers 5.19.0 and 5.23.0", "models": got}
    ASSET.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {ASSET} (transformers {transformers.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
