import json
from pathlib import Path

import pytest
import torch

from tests.conftest import build_tiny
from xtok.models import catalogue as cat
from xtok.models import load
from xtok.models.convert import MODEL_INFO_FILE, ConversionError, check_gguf_readable, compare_with_folder, load_gguf
from xtok.models.load import resolve_model


def test_truncated_gguf_is_refused(tmp_path):
    src = cat.gguf_file(cat.get_entry("smollm2-135m"))
    bad = tmp_path / "truncated.gguf"
    with open(src, "rb") as fh:
        bad.write_bytes(fh.read(src.stat().st_size // 3))
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        check_gguf_readable(bad)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(ConversionError, match="corrupt or truncated"):
        check_gguf_readable(garbage)
    with pytest.raises(ConversionError):
        resolve_model(bad, cache_dir=tmp_path / "cache")
    # nothing complete, nothing half-written; only the (empty) build lock stays, in the cache's lock folder
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.parent.name != load.LOCKS_DIR]
    assert left == []


def test_compare_with_folder_catches_changed_logits(tmp_path, real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    model = build_tiny("llama", tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert compare_with_folder(model, tok, tmp_path) <= 1e-6
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.05)
    with pytest.raises(ConversionError, match="logits of the converted folder"):
        compare_with_folder(model, tok, tmp_path)


def test_compare_with_folder_catches_changed_tokenizer(tmp_path, real_tokenizer):
    tok = real_tokenizer("smollm2-135m")
    model = build_tiny("llama", tok)
    model.save_pretrained(tmp_path)
    other = real_tokenizer("qwen2.5-coder-0.5b")
    other.save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match="tokenizes the probe differently"):
        compare_with_folder(model, tok, tmp_path)


def test_prepared_smollm2_matches_gguf(cache_dir):
    """The catalogue conversion of SmolLM2 reproduces the GGUF-loaded model's logits and tokenizer."""
    folder = resolve_model("smollm2-135m", cache_dir)
    info = json.loads((Path(folder) / MODEL_INFO_FILE).read_text())
    assert info["max_abs_logit_diff"] <= 1e-4 and info["tied_embeddings"] and info["vocab_size"] == 49152
    tok, model = load_gguf(cat.gguf_file(cat.get_entry("smollm2-135m")))
    assert compare_with_folder(model, tok, folder) <= 1e-4


def test_interrupted_conversion_leaves_no_complete_folder(tmp_path, monkeypatch, real_tokenizer):
    from xtok.models import convert

    tok = real_tokenizer("smollm2-135m")
    monkeypatch.setattr(convert, "load_gguf_with_spec", lambda path: (tok, build_tiny("llama", tok), None))

    def boom(*a, **k):
        raise ConversionError("simulated failure after writing weights")

    monkeypatch.setattr(convert, "compare_with_folder", boom)
    out = tmp_path / "out" / "smol"
    with pytest.raises(ConversionError):
        convert.convert_gguf(tmp_path / "any.gguf", out)
    assert list((tmp_path / "out").iterdir()) == []


def test_bf16_storage_rounds_once_and_is_checked_in_float32(tmp_path, monkeypatch, real_tokenizer):
    """A catalogue entry stored in bf16: every weight written is the float32 weight rounded to bf16 (torch's own
    rounding is the reference), the folder is checked in float32 against the rounded model, and what the rounding
    moved is recorded."""
    from xtok.models import convert
    from xtok.models.load import load_model, stored_tensors

    tok = real_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    model = build_tiny("llama", tok)
    source = {n: p.detach().clone() for n, p in model.named_parameters()}
    monkeypatch.setattr(convert, "load_gguf_with_spec", lambda path: (tok, model, None))
    out = tmp_path / "bf16"
    convert.convert_gguf(tmp_path / "any.gguf", out, store_dtype="bfloat16")
    assert {d for d, _ in stored_tensors(out).values()} == {"BF16"}
    info = json.loads((out / MODEL_INFO_FILE).read_text())
    assert info["stored_dtype"] == "bfloat16" and info["max_abs_logit_diff"] <= 1e-4
    assert info["rounding_max_abs_logit_change"] > 0 and 0 <= info["rounding_top1_agreement"] <= 1
    loaded, _ = load_model(str(out))  # float32 by default
    params = dict(loaded.named_parameters())
    for name, weight in source.items():
        got = params[name]
        assert got.dtype == torch.float32
        assert torch.equal(got, weight.to(torch.bfloat16).to(torch.float32)), name
    assert not torch.equal(params["model.embed_tokens.weight"], source["model.embed_tokens.weight"])  # it did round


def test_catalogue_store_dtype_change_rebuilds(tmp_path, monkeypatch):
    """A cached folder that stores another dtype than its catalogue entry asks for is not current."""
    import dataclasses

    from xtok.models import load

    entry = dataclasses.replace(cat.get_entry("smollm2-135m"), store_dtype="bfloat16")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / MODEL_INFO_FILE).write_text(json.dumps({"stored_dtype": "float32"}))
    assert load._stored_dtype_differs(folder, entry, say_why=False)
    (folder / MODEL_INFO_FILE).write_text(json.dumps({"stored_dtype": "bfloat16"}))
    assert not load._stored_dtype_differs(folder, entry, say_why=False)
    (folder / MODEL_INFO_FILE).write_text(json.dumps({}))  # folders made before store_dtype existed are float32
    assert not load._stored_dtype_differs(folder, cat.get_entry("smollm2-135m"), say_why=False)
