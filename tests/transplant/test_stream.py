"""The streaming transplant writes what the in-memory one computes, tensor for tensor, without loading the models."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from xtok.models.load import stored_tensors
from xtok.transplant.apply import transplant
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


def test_streaming_refuses_a_head_method_that_runs_the_models(tiny_model_dir, tmp_path):
    s_dir, t_dir, s_tok, t_tok = _pair(tiny_model_dir, "qwen2.5-coder-0.5b", "smollm2-135m")
    with pytest.raises(ValueError, match="calibrates by running both models"):
        stream_transplant(s_dir, s_tok, t_tok, tmp_path, teacher_dir=t_dir, out_dtype="float32", method="omp",
                          head_method="subword-prior", **OMP)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no safetensors files"):
        Tensors(empty)
