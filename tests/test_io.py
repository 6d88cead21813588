import json

import pytest

from xtok.utils.io import PROVENANCE_FILE, atomic_dir, write_json, write_provenance


def test_atomic_dir_renames_on_success(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as tmp:
        assert tmp != out and not out.exists()
        (tmp / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"123")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_dir(out):
            pass
    assert (out / "old").exists()
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_provenance_records_versions(tmp_path):
    write_provenance(tmp_path, {"k": 1}, step="test")
    rec = json.loads((tmp_path / PROVENANCE_FILE).read_text())
    assert rec["config"] == {"k": 1} and rec["step"] == "test"
    assert "torch" in rec["packages"] and "transformers" in rec["packages"]
    assert rec["xtok_version"]


def test_write_json_roundtrip(tmp_path):
    p = write_json(tmp_path / "sub" / "x.json", {"a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2]}
