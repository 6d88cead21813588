"""Training blocks from the teacher's greedy continuations (a drafter's on-policy data)."""

import json

import pytest
import torch

from tests.conftest import build_tiny
from tests.distill.test_run import _cfg, data_file  # noqa: F401  (a fixture)
from xtok.distill.generations import GENERATIONS_FILE, teacher_generations


def _blocks(tok, n=4, seq_len=12):
    text = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * i)\n" * 4
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[: n * seq_len], dtype=torch.int32).view(n, seq_len)


@pytest.mark.parametrize("stops", ["one", "list"])
def test_generations_are_the_teachers_greedy_choice(real_tokenizer, stops):
    """Each position after the prompt holds the token the teacher ranks first there (the end-of-sequence ids
    excluded), checked against one full forward of the whole block: the KV-cached generate and it agree to float32
    rounding. "list": a model's several stop ids, one of them the teacher's first choice somewhere."""
    tok = real_tokenizer("smollm2-135m")
    teacher = build_tiny("llama", tok, seed=3)
    blocks = _blocks(tok)
    eos = [tok.eos_token_id]
    if stops == "list":
        free = teacher_generations(teacher, "tiny", blocks, 5, 3, tok.eos_token_id)
        eos.append(int(free[0, 5]))
    out = teacher_generations(teacher, "tiny", blocks, prompt_tokens=5, batch_size=3,
                              eos_token_id=eos if stops == "list" else eos[0])
    assert out.shape == blocks.shape and out.dtype == torch.int32
    assert torch.equal(out[:, :5], blocks[:, :5]) and not torch.equal(out, blocks)
    assert not torch.isin(out[:, 5:], torch.tensor(eos)).any()
    with torch.no_grad():
        logits = teacher(input_ids=out.long()).logits[:, 4:-1]  # the predictions of positions 5..11
    logits[..., eos] = float("-inf")
    chosen = logits.gather(-1, out[:, 5:].long()[..., None])[..., 0]
    best = logits.max(-1).values
    # the chosen token's logit is the maximum, up to the rounding of two float32 computations of one logit
    assert torch.all(chosen >= best - 1e-4 * best.abs().clamp_min(1)), (chosen - best).min()


def test_generations_are_kept_and_reused(real_tokenizer, tmp_path):
    tok = real_tokenizer("smollm2-135m")
    teacher = build_tiny("llama", tok, seed=3)
    blocks = _blocks(tok)
    first = teacher_generations(teacher, "tiny", blocks, 5, 8, tok.eos_token_id, tmp_path)
    assert (tmp_path / GENERATIONS_FILE).stat().st_size == blocks.numel() * 4
    assert not list(tmp_path.glob(".*"))  # no temporary file left

    class Refuses:
        def eval(self):
            return self

        def generate(self, **kw):
            raise AssertionError("generated again")

    again = teacher_generations(Refuses(), "tiny", blocks, 5, 8, tok.eos_token_id, tmp_path)
    assert torch.equal(again, first)
    other = teacher_generations(teacher, "tiny", blocks, 7, 8, tok.eos_token_id, tmp_path)  # another prompt length
    assert torch.equal(other[:, :7], blocks[:, :7])
    with pytest.raises(AssertionError, match="generated again"):
        teacher_generations(Refuses(), "other teacher", blocks, 7, 8, tok.eos_token_id, tmp_path)
    with pytest.raises(AssertionError, match="generated again"):  # generations of another precision
        teacher_generations(Refuses(), "tiny", blocks, 7, 8, tok.eos_token_id, tmp_path, bf16=True)
    with pytest.raises(ValueError, match=r"prompt_tokens=12 must lie in \[1, seq_len=12\)"):
        teacher_generations(teacher, "tiny", blocks, 12, 8, tok.eos_token_id)


def test_distill_on_generations(tiny_model_dir, tmp_path, data_file):  # noqa: F811
    student, teacher = tiny_model_dir("smollm2-135m"), tiny_model_dir("smollm2-135m", seed=1)
    cfg = _cfg(tmp_path, student, teacher, data_file, loss="reverse_kl",
               generations={"prompt_tokens": 6, "batch_size": 4})
    from xtok.distill.run import run_distill

    out, report = run_distill(cfg)
    assert report["generations"] == {"prompt_tokens": 6, "batch_size": 4} and report["sequences"] == 8
    gen = torch.from_file(str(out / "data" / GENERATIONS_FILE), size=8 * 16, dtype=torch.int32).view(8, 16)
    blocks = torch.from_file(str(out / "data" / "blocks.int32"), size=8 * 16, dtype=torch.int32).view(8, 16)
    assert torch.equal(gen[:, :6], blocks[:, :6]) and not torch.equal(gen[:, 6:], blocks[:, 6:])
    assert json.loads((out / "data" / "generations.json").read_text())["key"]["prompt_tokens"] == 6
    with pytest.raises(ValueError, match="prompt_tokens=16 leaves the teacher nothing"):
        _cfg(tmp_path, student, teacher, data_file, generations={"prompt_tokens": 16})
    with pytest.raises(ValueError, match="loss 'ce' has no such teacher"):
        _cfg(tmp_path, student, None, data_file, loss="ce", generations={})
