"""Cached folders record the versions that built them and are rebuilt when those differ from the running ones."""

import json
import logging
from pathlib import Path

import pytest

from xtok.models import catalogue as cat
from xtok.models import load
from xtok.models.convert import CONVERTER_FORMAT, MODEL_INFO_FILE, build_versions, stale_reason
from xtok.utils.io import PROVENANCE_FILE


def _edit_build(folder: Path, **changes) -> None:
    path = folder / PROVENANCE_FILE
    prov = json.loads(path.read_text())
    prov["build"].update(changes)
    path.write_text(json.dumps(prov))


def test_build_versions_name_what_a_folder_depends_on():
    import tokenizers
    import transformers

    import xtok

    v = build_versions()
    assert set(v) == {"xtok", "converter_format", "transformers", "tokenizers", "gguf"} and v["gguf"]
    assert (v["xtok"], v["converter_format"]) == (xtok.__version__, CONVERTER_FORMAT)
    assert (v["transformers"], v["tokenizers"]) == (transformers.__version__, tokenizers.__version__)


def test_extracted_tokenizer_built_by_another_transformers_is_rebuilt(tmp_path, caplog):
    cache = tmp_path / "cache"
    folder = Path(load.resolve_tokenizer("smollm2-135m", cache))
    assert folder == cache / "tokenizers" / "smollm2-135m"
    prov = json.loads((folder / PROVENANCE_FILE).read_text())
    assert prov["build"] == build_versions() and prov["gguf_tokenizer"]["add_bos"] is False
    assert stale_reason(folder) is None

    _edit_build(folder, transformers="5.0.0-other")
    (folder / "tokenizer.json").write_text("{}")  # what another version wrote: unusable here
    assert "transformers 5.0.0-other" in stale_reason(folder)
    with caplog.at_level(logging.INFO, logger="xtok.models.load"):
        again = Path(load.resolve_tokenizer("smollm2-135m", cache))
    assert again == folder and stale_reason(folder) is None
    assert "rebuilding" in caplog.text and "transformers 5.0.0-other" in caplog.text
    assert load.load_tokenizer("smollm2-135m", cache)("hi")["input_ids"] == [6004]


def test_a_current_folder_is_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load.resolve_tokenizer("smollm2-135m", cache)

    def no_rebuild(*a, **k):
        raise AssertionError("a current tokenizer folder was rebuilt")

    monkeypatch.setattr(load, "extract_tokenizer", no_rebuild)
    load.resolve_tokenizer("smollm2-135m", cache)


@pytest.fixture
def fake_converter(tmp_path, monkeypatch):
    """load.convert_gguf replaced by a fast fake that writes a minimal folder with current build versions."""
    from xtok.utils.io import write_provenance

    calls = []

    def fake_convert(gguf, out, *, overwrite=False, info=None, store_dtype="float32"):
        calls.append(Path(out))
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / MODEL_INFO_FILE).write_text(json.dumps({"stored_dtype": store_dtype}))
        write_provenance(out, None, step="convert_gguf", build=build_versions())
        return out

    monkeypatch.setattr(load, "convert_gguf", fake_convert)
    monkeypatch.setattr(cat, "gguf_file", lambda entry, cache_dir=None: tmp_path / "model.gguf")
    return calls


def test_converted_model_is_rebuilt_when_the_converter_format_changes(tmp_path, fake_converter):
    cache = tmp_path / "cache"
    out = load.prepare("smollm2-135m", cache)
    assert load.prepare("smollm2-135m", cache) == out and len(fake_converter) == 1  # current: reused
    assert load.is_prepared("smollm2-135m", cache)

    _edit_build(out, converter_format=CONVERTER_FORMAT - 1)
    assert not load.is_prepared("smollm2-135m", cache)
    load.prepare("smollm2-135m", cache)
    assert len(fake_converter) == 2 and stale_reason(out) is None


def test_converted_model_without_build_versions_is_rebuilt(tmp_path, fake_converter):
    """A folder from an xtok that recorded no build versions (every cache made before them) is rebuilt once."""
    out = load.catalogue_model_dir("smollm2-135m", tmp_path / "cache")
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    assert "records no build versions" in stale_reason(out)
    load.resolve_model("smollm2-135m", tmp_path / "cache")
    assert fake_converter == [out] and stale_reason(out) is None


def test_two_processes_preparing_one_model_convert_it_once(tmp_path, fake_converter, monkeypatch):
    """A second caller that arrives while the first converts waits for it and reuses its folder (before the lock, the
    second failed with 'output ... already exists' when `xtok models prepare` and a transplant ran side by side)."""
    import threading
    import time

    convert = load.convert_gguf

    def slow_convert(*args, **kwargs):
        time.sleep(0.5)  # long enough for the other caller to find no folder and start too, without a lock
        return convert(*args, **kwargs)

    monkeypatch.setattr(load, "convert_gguf", slow_convert)
    cache, results, errors = tmp_path / "cache", [], []

    def call():
        try:
            results.append(load.prepare("smollm2-135m", cache))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure of either caller
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(fake_converter) == 1 and results == [load.catalogue_model_dir("smollm2-135m", cache)] * 2
