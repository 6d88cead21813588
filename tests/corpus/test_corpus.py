import json

import pytest

from xtok.corpus import load_corpus


def test_bundled_eval_has_four_domains():
    ds = load_corpus("bundled:eval")
    assert sorted(set(ds["domain"])) == ["code", "multilingual", "numbers", "prose"]
    assert all(t.strip() for t in ds["text"])


def test_bundled_train_is_disjoint_from_eval():
    ev = set(load_corpus("bundled:eval")["text"])
    tr = set(load_corpus("bundled:train")["text"])
    assert not ev & tr


def test_limits(tmp_path):
    ds = load_corpus("bundled:eval", domains=["prose", "code"], max_docs_per_domain=2, max_chars_per_doc=50)
    assert len(ds) == 4 and max(len(t) for t in ds["text"]) <= 50


def test_jsonl_without_domain_uses_stem_and_txt_is_one_document(tmp_path):
    (tmp_path / "legal.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(3)))
    (tmp_path / "notes.txt").write_text("line one\nline two\n")
    ds = load_corpus(str(tmp_path))
    assert sorted(zip(ds["domain"], ds["text"])) == [
        ("legal", "doc 0"), ("legal", "doc 1"), ("legal", "doc 2"), ("notes", "line one\nline two\n")]


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_corpus(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(str(tmp_path / "empty.jsonl"))
    (tmp_path / "notext.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no 'text' field"):
        load_corpus(str(tmp_path / "notext.jsonl"))
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(ValueError, match="no non-empty documents"):
        load_corpus(str(tmp_path / "blank.jsonl"))
    with pytest.raises(ValueError, match="domains"):
        load_corpus("bundled:eval", domains=["poetry"])


def test_json_that_is_not_records_names_the_line(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}], indent=1))
    assert load_corpus(str(tmp_path / "array.json"))["text"] == ["one", "two"]
    (tmp_path / "broken.jsonl").write_text(json.dumps({"text": "fine"}) + "\n{\"text\": oops}\n")
    with pytest.raises(ValueError, match=r"broken.jsonl line 2 is not JSON \(Expecting value\)"):
        load_corpus(str(tmp_path / "broken.jsonl"))
