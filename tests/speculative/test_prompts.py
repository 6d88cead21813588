import json

import pytest

from xtok.corpus import bundled_dir
from xtok.speculative.run import corpus_prompts


def _docs(name: str) -> list[str]:
    with open(bundled_dir("eval") / name, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def test_prompt_domains_take_only_that_domain():
    code = _docs("code_python.jsonl")
    prompts = corpus_prompts("bundled:eval", 8, 120, ["code"])
    assert len(prompts) == 8 and len(set(prompts)) == 8
    assert all(any(doc.startswith(p) for doc in code) for p in prompts)
    mixed = corpus_prompts("bundled:eval", 8, 120)
    assert sum(any(doc.startswith(p) for doc in code) for p in mixed) == 2  # four domains in turn


def test_too_few_documents_for_num_prompts_is_refused():
    n = len(_docs("code_python.jsonl"))
    with pytest.raises(ValueError, match=f"num_prompts={n + 1} .* holds only {n} documents"):
        corpus_prompts("bundled:eval", n + 1, 50, ["code"])
    with pytest.raises(ValueError, match="domains"):
        corpus_prompts("bundled:eval", 2, 50, ["klingon"])
