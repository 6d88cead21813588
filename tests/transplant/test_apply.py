import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import build_tiny
from xtok.transplant.apply import REPORT_FILE, save_transplant, transplant
from xtok.vocab.shared import build_token_map

TEXT = "The cat sat on the mat, and the dog ran in the park."


@pytest.fixture(scope="module")
def toks(real_tokenizer):
    return real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b"), real_tokenizer("gemma3-270m")


@pytest.mark.parametrize("direction", ["qwen_to_smol_tied", "smol_to_qwen_untied", "smol_to_gemma"])
def test_transplant_shapes_copies_and_shared_logits(toks, direction, tmp_path):
    smol, qwen, gemma = toks
    # OMP where the teacher is SmolLM2 (few new tokens); the 112k new Qwen tokens take the cheap mean (same machinery).
    if direction == "qwen_to_smol_tied":
        s_tok, s_arch, t_tok, t_arch, method = smol, "llama", qwen, "qwen2", "mean"
    elif direction == "smol_to_qwen_untied":
        s_tok, s_arch, t_tok, t_arch, method = qwen, "qwen2", smol, "llama", "omp"
    else:
        s_tok, s_arch, t_tok, t_arch, method = gemma, "gemma3", smol, "llama", "omp"
    student, teacher = build_tiny(s_arch, s_tok), build_tiny(t_arch, t_tok, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    model, report = transplant(student, s_tok, t_tok, teacher_model=teacher, method=method, head_method=None, k=4,
                               chunk=4096)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items()), "the student was modified"
    assert model.config.vocab_size == len(t_tok) == model.get_input_embeddings().weight.shape[0]
    assert model.config.eos_token_id == t_tok.eos_token_id
    assert (model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()) == \
        report["tied_student"]
    tmap = build_token_map(t_tok, s_tok)
    shared = tmap.shared_teacher_ids
    torch.testing.assert_close(model.get_input_embeddings().weight[shared],
                               student.get_input_embeddings().weight[tmap.student_of[shared]])
    assert report["spaces"]["input"]["copied"] == len(shared)
    assert ("output" in report["spaces"]) == (not report["tied_student"])
    # Any sequence of shared tokens: the transplant computes the same hidden states, so the same logits on shared ids.
    # Same weights and the same ops, only the head's width differs: float32 summation order, hence the default
    # float32 tolerances (rtol 1.3e-6, atol 1e-5) on logits of order 1.
    pick = shared[torch.randperm(len(shared), generator=torch.Generator().manual_seed(0))[:24]]
    with torch.no_grad():
        new_logits = model(input_ids=pick[None]).logits[0][:, shared]
        old_logits = student(input_ids=tmap.student_of[pick][None]).logits[0][:, tmap.student_of[shared]]
    assert old_logits.abs().max() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(new_logits, old_logits)
    out = save_transplant(model, t_tok, tmp_path / "out", report)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == len(t_tok) and (out / REPORT_FILE).is_file()
    saved = reloaded.state_dict()
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items()), "weights changed on save/load"
    prompt = tok("Hello", return_tensors="pt")
    assert prompt["input_ids"].tolist() == t_tok("Hello", return_tensors="pt")["input_ids"].tolist()
    gen = reloaded.generate(**prompt, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    with torch.no_grad():
        want = model.generate(**prompt, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 3 and torch.equal(gen, want)

def test_tied_student_is_untied_for_a_different_head_method(toks, tmp_path):
    smol, _, gemma = toks
    student, teacher = build_tiny("gemma3", gemma), build_tiny("llama", smol, seed=1)
    model, report = transplant(student, gemma, smol, teacher_model=teacher, method="omp", head_method="focus", k=4)
    assert report["tied_student"] and report["untied"] and report["head_method"] == "focus"
    inp, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert inp.data_ptr() != out.data_ptr() and not model.config.tie_word_embeddings
    tmap = build_token_map(smol, gemma)
    shared, new = tmap.shared_teacher_ids, tmap.new_teacher_ids
    old = student.get_input_embeddings().weight[tmap.student_of[shared]]
    torch.testing.assert_close(inp[shared], old)
    torch.testing.assert_close(out[shared], old)
    assert not torch.allclose(inp[new], out[new])  # OMP rows in, FOCUS rows out
    reloaded = AutoModelForCausalLM.from_pretrained(save_transplant(model, smol, tmp_path / "u", report))
    torch.testing.assert_close(reloaded.get_output_embeddings().weight, out)
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, inp)


def test_bad_inputs(toks):
    smol, qwen, _ = toks
    student, teacher = build_tiny("llama", smol), build_tiny("qwen2", qwen, seed=1)
    with pytest.raises(ValueError, match="larger than the .* shared anchor tokens"):
        transplant(student, smol, qwen, teacher_model=teacher, k=10**6)
    with pytest.raises(ValueError, match="bare tokenizer"):
        transplant(student, smol, qwen, teacher_model=None, method="omp")
    with pytest.raises(ValueError, match="unknown init method"):
        transplant(student, smol, qwen, teacher_model=teacher, method="magic")
    small = build_tiny("llama", smol, vocab_size=1000)
    with pytest.raises(ValueError, match=r"has id \d+ but the student's embedding has only 1000 rows"):
        transplant(small, smol, qwen, teacher_model=teacher, method="mean")
    broken = build_tiny("llama", smol)
    with torch.no_grad():
        broken.get_input_embeddings().weight[5, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        transplant(broken, smol, qwen, teacher_model=teacher, method="mean")


def test_no_shared_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def wordlevel(words):
        t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
        t.pre_tokenizer = pre_tokenizers.Whitespace()
        return PreTrainedTokenizerFast(tokenizer_object=t)

    a, b = wordlevel(["α", "β", "γ"]), wordlevel(["x", "y", "z"])
    with pytest.raises(ValueError, match="share no token"):
        transplant(build_tiny("llama", b, vocab_size=3), b, a, method="mean", head_method="mean")


def test_check_port_names_what_differs_in_one_line_error_the_cli_reports(toks):
    from xtok.cli import USER_ERRORS
    from xtok.transplant.apply import check_port

    smol = toks[0]
    model = build_tiny("qwen2", smol, vocab_size=256, bos_token_id=None, eos_token_id=None, pad_token_id=None)  # untied
    check_port(model, 256, tied=False)
    cases = []
    with pytest.raises(USER_ERRORS) as err:
        check_port(model, 300, tied=False)
    cases.append((err.value, "config.vocab_size 256"))
    with pytest.raises(USER_ERRORS) as err:
        check_port(model, 256, tied=True)
    cases.append((err.value, "expected them tied"))
    model.lm_head = torch.nn.Linear(64, 200, bias=False)
    with pytest.raises(USER_ERRORS) as err:
        check_port(model, 256, tied=False)
    cases.append((err.value, "lm_head.weight has shape (200, 64), the architecture wants (256, 64)"))
    for exc, needle in cases:
        assert needle in str(exc) and "\n" not in str(exc)
