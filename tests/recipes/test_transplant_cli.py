"""xtok transplant through the real CLI on tiny models with real tokenizers."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.test_cli import xtok
from xtok.transplant.apply import REPORT_FILE
from xtok.utils.io import PROVENANCE_FILE


def test_transplant_cli_writes_a_loadable_folder(tiny_model_dir, tmp_path):
    student, teacher = tiny_model_dir("qwen2.5-coder-0.5b"), tiny_model_dir("smollm2-135m")
    out = tmp_path / "out"
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(out), "--k", "4")
    assert res.returncode == 0, res.stderr
    assert "shared" in res.stdout
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["method"] == "omp" and report["k"] == 4
    head = report["spaces"]["output"]
    assert report["head_method"] == "subword-prior" and head["approximated"] > 0.99 * report["tokens"]["new"]
    assert head["approximated"] + head["fallback_to_mean"] == report["tokens"]["new"]  # unmatched specials: no bytes
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert prov["config"]["student"] == str(student)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) == 49152
    # a second run refuses to overwrite, and leaves the folder as it was
    again = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (out / REPORT_FILE).is_file()


def test_transplant_cli_bad_input(tiny_model_dir, tmp_path):
    student, teacher = tiny_model_dir("qwen2.5-coder-0.5b"), tiny_model_dir("smollm2-135m")
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "o"),
               "--teacher-tokenizer-only")
    assert res.returncode == 2 and "needs the teacher's embeddings" in " ".join(res.stderr.split())
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "o"),
               "--method", "telepathy")
    assert res.returncode == 2 and "unknown init method" in " ".join(res.stderr.split())
    res = xtok("transplant", "--teacher", str(teacher), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "missing --student" in res.stderr
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "o"),
               "--teacher-tokenizer-only", "--method", "subword")
    assert res.returncode == 2 and "pass --alignment DIR" in " ".join(res.stderr.split())
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "o"),
               "--method", "subword-prior")
    assert res.returncode == 2 and "--head-method subword-prior" in " ".join(res.stderr.split())
    assert not (tmp_path / "o").exists()


def test_missing_calibration_data_fails_before_loading_models(tmp_path, monkeypatch):
    import pytest

    import xtok.transplant.run as run
    from xtok.configfile import config_from_dict

    monkeypatch.setattr(run, "load_model", lambda *a: pytest.fail("models loaded before the data was checked"))
    cfg = config_from_dict({"recipe": "transplant", "student": "smollm2-135m", "teacher": "qwen2.5-coder-0.5b",
                            "out": str(tmp_path / "o"), "head_method": "subword-prior",
                            "calibration_data": str(tmp_path / "nowhere.jsonl")})
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        run.run_transplant(cfg)
    assert not (tmp_path / "o").exists()


def test_tokenizer_only_teacher_gives_the_teachers_embedding_rows(tiny_model_dir, tmp_path):
    """HF Qwen2.5 has 151,936 embedding rows for 151,665 tokens: the student must get the rows, not len(tokenizer)."""
    student = tiny_model_dir("qwen2.5-coder-0.5b")
    teacher = tiny_model_dir("smollm2-135m", vocab_size=49152 + 64)  # config.vocab_size > len(tokenizer)
    out = tmp_path / "out"
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(out),
               "--teacher-tokenizer-only", "--method", "subword", "--head-method", "mean")
    assert res.returncode == 0, res.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(AutoTokenizer.from_pretrained(out)) == 49152
    assert model.config.vocab_size == model.get_input_embeddings().weight.shape[0] == 49152 + 64
    assert json.loads((out / REPORT_FILE).read_text())["vocab_rows"] == 49152 + 64


def test_teacher_vocab_size_reads_configs_without_weights_or_conversion(tiny_model_dir, tmp_path):
    from xtok.models.catalogue import CATALOGUE
    from xtok.transplant.run import teacher_vocab_size

    assert teacher_vocab_size(tiny_model_dir("smollm2-135m", vocab_size=49200), tmp_path) == 49200
    empty = tmp_path / "cache"
    assert teacher_vocab_size("qwen2.5-coder-0.5b", empty) == CATALOGUE["qwen2.5-coder-0.5b"].vocab_size == 151936
    assert not empty.exists()  # a catalogue model not converted yet: its entry, no conversion
    folder = tmp_path / "tok-only"
    AutoTokenizer.from_pretrained(tiny_model_dir("smollm2-135m")).save_pretrained(folder)
    assert teacher_vocab_size(folder, tmp_path) is None  # a bare tokenizer: no config to read


def test_transplant_writes_the_students_stored_dtype_unless_told(tiny_model_dir, tmp_path):
    import torch

    from xtok.models.load import stored_dtype, stored_tensors
    from xtok.vocab.shared import build_token_map

    student, teacher = tiny_model_dir("qwen2.5-coder-0.5b"), tiny_model_dir("smollm2-135m")
    bf16 = tmp_path / "bf16-student"
    AutoModelForCausalLM.from_pretrained(student, dtype=torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(student).save_pretrained(bf16)
    assert stored_dtype(student) == "float32" and stored_dtype(bf16) == "bfloat16"
    runs = {"source": tmp_path / "src", "float32": tmp_path / "f32"}
    for out_dtype, out in runs.items():
        res = xtok("transplant", "--student", str(bf16), "--teacher", str(teacher), "--out", str(out), "--k", "2",
                   "--method", "mean", "--head-method", "mean", "--out-dtype", out_dtype)
        assert res.returncode == 0, res.stderr
    assert {d for d, _ in stored_tensors(runs["source"]).values()} == {"BF16"}
    assert {d for d, _ in stored_tensors(runs["float32"]).values()} == {"F32"}
    assert json.loads((runs["source"] / REPORT_FILE).read_text())["dtype"] == "bfloat16"
    # shared rows are the student's bf16 values exactly, in both outputs
    s_emb = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16).get_input_embeddings().weight
    tmap = build_token_map(AutoTokenizer.from_pretrained(teacher), AutoTokenizer.from_pretrained(bf16))
    shared = tmap.shared_teacher_ids
    for out in runs.values():
        emb = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).get_input_embeddings().weight
        assert torch.equal(emb[shared], s_emb[tmap.student_of[shared]].float())
    res = xtok("transplant", "--student", str(bf16), "--teacher", str(teacher), "--out", str(tmp_path / "bad"),
               "--out-dtype", "int8")
    assert res.returncode == 2 and "out_dtype" in res.stderr and not (tmp_path / "bad").exists()
