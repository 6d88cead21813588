"""The streaming transplant writes what the in-memory one computes, tensor for tensor, without loading the models."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from xtok.models.load import stored_tensors
from xtok.transplant.apply import calibrate_models, transplant
from xtok.transplant.stream import INDEX_FILE, Tensors, embedding_keys, stream_transplant

OMP = dict(k=4, candidates=32, chunk=4096)


def _pair(tiny_model_dir, student: str, teacher: str):
    s_dir, t_dir = tiny_model_dir(student), tiny_model_dir(teacher)
    return s_dir, t_dir, AutoTokenizer.from_pretrained(s_dir), AutoTokenizer.from_pretrained(t_dir)


@pytest.mark.parametrize("case", ["untied_omp", "tied_mean", "tied_untied_by_head_method"])
def test_streamed_equals_in_memory(tiny_model_dir, tmp_path, case):
    if case == "untied_omp":  # tiny Qwen2 (untied) gets SmolLM2's tokenizer: OMP in both spaces
        s_dir, t_dir, s_tok, t_tok = _pair(tiny_model_dir, "qwen2.5-coder-0.5b", "smollm2-135m")
        methods = dict(method="omp", head_method="omp", **OMP)
    else:  # tiny Llama (tied) gets Qwen's: 112k new rows by the cheap methods
        s_dir, t_dir, s_tok, t_tok = _pair(tiny_model_dir, "smollm2-135m", "qwen2.5-coder-0.5b")
        methods = dict(method="mean", head_method="mean" if case == "tied_mean" else "subword")
    student, teacher = AutoModelForCausalLM.from_pretrained(s_dir), AutoModelForCausalLM.from_pretrained(t_dir)
    model, mem_report = transplant(student, s_tok, t_tok, teacher_model=teacher, **methods)
    out = tmp_path / "streamed"
    out.mkdir()
    report = stream_transplant(s_dir, s_tok, t_tok, out, teacher_dir=t_dir, out_dtype="float32", **methods)
    assert report["streamed"] and report["tokens"] == mem_report["tokens"] and report["untied"] == mem_report["untied"]
    assert report["spaces"].keys() == mem_report["spaces"].keys()
    streamed = AutoModelForCausalLM.from_pretrained(out)
    want, got = model.state_dict(), streamed.state_dict()
    assert want.keys() == got.keys()
    for key in want:  # the same float32 computations on the same matrices: equal to the bit
        assert torch.equal(want[key], got[key]), key
    in_key, head_key, tied = embedding_keys(streamed.config)
    assert tied == (case == "tied_mean") == streamed.config.tie_word_embeddings
    assert (head_key in stored_tensors(out)) == (not tied)
    assert json.loads((out / INDEX_FILE).read_text())["weight_map"].keys() == stored_tensors(out).keys()
    assert streamed.config.eos_token_id == t_tok.eos_token_id and streamed.config.vocab_size == model.config.vocab_size


def test_streaming_keeps_a_bf16_body_bit_for_bit(tiny_model_dir, tmp_path):
    s_dir, t_dir, s_tok, t_tok = _pair(tiny_model_dir, "qwen2.5-coder-0.5b", "smollm2-135m")
    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(s_dir, dtype=torch.bfloat16).save_pretrained(bf16)
    out = tmp_path / "out"
    out.mkdir()
    stream_transplant(bf16, s_tok, t_tok, out, teacher_dir=t_dir, out_dtype="bfloat16", method="omp", head_method="omp",
                      **OMP)
    src, dst = Tensors(bf16), Tensors(out)
    in_key, head_key, _ = embedding_keys(AutoModelForCausalLM.from_pretrained(out, device_map="meta").config)
    assert {d for d, _ in stored_tensors(out).values()} == {"BF16"}
    body = [n for n in src.where if n not in (in_key, head_key)]
    assert body and all(torch.equal(src.get(n), dst.get(n)) for n in body)
    with safe_open(str(dst.where[in_key]), framework="pt") as f:
        assert f.get_slice(in_key).get_shape()[0] == len(t_tok)


def _equal_weights(want: dict, out) -> None:
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_streamed_subword_prior_with_calibration_equals_in_memory(tiny_model_dir, tmp_path):
    """subword-prior (with its context term) runs the models for its calibration only: given that calibration the
    streaming path writes the in-memory transplant's weights to the bit."""
    s_dir, t_dir, s_tok, t_tok = _pair(tiny_model_dir, "smollm2-135m", "qwen2.5-coder-0.5b")
    student, teacher = AutoModelForCausalLM.from_pretrained(s_dir), AutoModelForCausalLM.from_pretrained(t_dir)
    cal = dict(calibration_tokens=512, head_context=0.5)
    methods = dict(method="mean", head_method="subword-prior")
    model, mem_report = transplant(student, s_tok, t_tok, teacher_model=teacher, **cal, **methods)
    calibration = calibrate_models(student, s_tok, t_tok, teacher_model=teacher, **cal)
    out = tmp_path / "streamed"
    out.mkdir()
    report = stream_transplant(s_dir, s_tok, t_tok, out, teacher_dir=t_dir, out_dtype="float32", calibration=calibration,
                               head_context=0.5, **methods)
    assert report["untied"] and report["spaces"]["output"]["subword_prior"]["head_context"] == 0.5
    assert report["spaces"]["output"]["subword_prior"]["context_map"] == mem_report["spaces"]["output"]["subword_prior"]["context_map"]
    _equal_weights(model.state_dict(), out)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match="calibrates by running the models"):
        stream_transplant(s_dir, s_tok, t_tok, bare, teacher_dir=t_dir, out_dtype="float32", **methods)


def test_run_transplant_streams_a_calibrated_head_and_says_up_front_what_memory_it_needs(tiny_model_dir, tmp_path,
                                                                                        monkeypatch):
    import xtok.transplant.run as run
    from xtok.configfile import config_from_dict

    s_dir, t_dir, s_tok, t_tok = _pair(tiny_model_dir, "smollm2-135m", "qwen2.5-coder-0.5b")
    settings = dict(method="mean", head_method="subword-prior", calibration_tokens=512)
    want, _ = transplant(AutoModelForCausalLM.from_pretrained(s_dir), s_tok, t_tok,
                         teacher_model=AutoModelForCausalLM.from_pretrained(t_dir), **settings)
    cfg = dict(recipe="transplant", student=str(s_dir), teacher=str(t_dir), out=str(tmp_path / "o"), **settings)
    made = run._calibration

    def slow_calibration(*a):  # the calibration runs before the streamed plan's clock: its time must be added
        calibration = made(*a)
        calibration.seconds = 1000.0
        return calibration

    monkeypatch.setattr(run, "_calibration", slow_calibration)
    out, report = run.run_transplant(config_from_dict(cfg), progress=False)
    assert report["streamed"] and report["spaces"]["output"]["subword_prior"]["tokens"]["teacher"] > 0
    assert 1000 < report["seconds"] < 1000 + 600
    _equal_weights(want.state_dict(), out)
    monkeypatch.setattr(run, "available_memory", lambda: 1 << 20)  # 1 MiB: not even the tiny models fit
    with pytest.raises(ValueError, match=r"the calibration needs about .* GiB \(the student and the teacher.*--head-method omp"):
        run.run_transplant(config_from_dict({**cfg, "out": str(tmp_path / "o2")}))
    assert not (tmp_path / "o2").exists()
    with pytest.raises(ValueError, match=r"the head fit needs about .* GiB \(the student twice and the teacher"):
        run.run_transplant(config_from_dict({**cfg, "out": str(tmp_path / "o3"), "head_fit_tokens": 256}))


def test_streaming_refuses_a_folder_without_safetensors(tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no safetensors files"):
        Tensors(empty)
