"""The head fit: multinomial logistic regression of the seen head rows on cached final hidden states."""

import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import build_tiny
from tests.test_cli import xtok
from xtok.transplant.apply import REPORT_FILE, transplant
from xtok.transplant.head_fit import final_states, fit_head, fit_rows, teacher_targets, token_windows


def _problem(seed=0, n=400, d=12, v=40, seen=15):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    w0 = torch.randn(v, d, generator=g) * 0.5
    targets = torch.randint(0, seen, (n,), generator=g) * 2  # even ids below 2 * seen occur, the rest never
    return hidden, targets, w0


def _reference_optimum(hidden, targets, w0, rows, l2):
    """The same convex problem written on the full softmax (F.cross_entropy), in float64, by Newton-free LBFGS run to
    convergence: an independent formulation of what fit_rows solves with its cached logsumexp of the fixed rows.
    ``targets`` are ids, or a dense (N, V) target distribution."""
    h, w0 = hidden.double(), w0.double()
    targets = targets.double() if targets.is_floating_point() else targets
    delta = torch.zeros(len(rows), w0.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([delta], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = w0.index_add(0, rows, delta)
        loss = F.cross_entropy(h @ w.T, targets) + l2 * (delta ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (w0[rows] + delta.detach()).float()


def test_fit_rows_reaches_the_unique_optimum_of_the_full_softmax_problem():
    hidden, targets, w0 = _problem()
    kept = w0.clone()
    fitted, rows, before, after = fit_rows(hidden, targets, w0, l2=0.05, iterations=200, chunk=128)
    assert torch.equal(w0, kept)  # the input is not modified
    assert torch.equal(rows, torch.unique(targets))
    ref = _reference_optimum(hidden, targets, w0, rows, 0.05)
    # strictly convex (l2 > 0): one optimum; float32 against float64 on logits of size ~5, so ~1e-4 in the rows
    torch.testing.assert_close(fitted, ref, rtol=0, atol=2e-3)
    torch.testing.assert_close(torch.tensor(before), F.cross_entropy(hidden @ w0.T, targets), rtol=1e-5, atol=1e-5)
    w = w0.clone()
    w[rows] = fitted
    torch.testing.assert_close(torch.tensor(after), F.cross_entropy(hidden @ w.T, targets), rtol=1e-5, atol=1e-5)
    assert after < before - 0.1


def _soft(seed, n, v, k):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    return ids, torch.rand(n, k, generator=g).softmax(1)


def test_fit_rows_with_soft_targets_reaches_the_optimum_of_the_mixed_target_problem():
    """With teacher_weight a, the target is (1 - a) onehot(y) + a q: the reference is F.cross_entropy against that dense
    distribution, with every row that either names free."""
    hidden, targets, w0 = _problem(seed=2)
    ids, probs = _soft(3, len(targets), w0.shape[0] // 2, 3)  # soft targets only among the first half of the rows
    alpha = 0.6
    fitted, rows, before, after = fit_rows(hidden, targets, w0, l2=0.05, iterations=200, chunk=128,
                                           soft=(ids, probs), soft_weight=alpha)
    assert torch.equal(rows, torch.unique(torch.cat([targets, ids.reshape(-1)])))
    dense = (1 - alpha) * F.one_hot(targets, w0.shape[0]).double()
    dense.scatter_add_(1, ids, alpha * probs.double())
    torch.testing.assert_close(dense.sum(1), torch.ones(len(targets), dtype=torch.float64))
    ref = _reference_optimum(hidden, dense, w0, rows, 0.05)
    torch.testing.assert_close(fitted, ref, rtol=0, atol=2e-3)
    w = w0.clone()
    w[rows] = fitted
    # the reported losses stay the hard next-token cross-entropy, whatever the mix
    torch.testing.assert_close(torch.tensor(after), F.cross_entropy(hidden @ w.T, targets), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(before), F.cross_entropy(hidden @ w0.T, targets), rtol=1e-5, atol=1e-5)
    # and the soft fit is not the hard one: the teacher's tokens pull their rows
    hard, hard_rows, _, _ = fit_rows(hidden, targets, w0, l2=0.05, iterations=200, chunk=128)
    assert len(hard_rows) < len(rows)


def test_teacher_targets_are_the_teachers_renormalized_top_k(real_tokenizer):
    qwen = real_tokenizer("qwen2.5-coder-0.5b")
    teacher = build_tiny("qwen2", qwen, seed=4)
    windows = token_windows(qwen, ["def f(x):\n    return x * 2\n", "a b", "x"], tokens=10_000)
    assert [w.shape[1] >= 2 for w in windows] == [True, True]  # "x" is one token: no position, left out
    ids, probs = teacher_targets(teacher, windows, 10_000, 5, vocab_rows=len(qwen))
    with torch.no_grad():
        logits = torch.cat([teacher(input_ids=w).logits[0, :-1, :len(qwen)] for w in windows])
    p = logits.softmax(1)
    top = p.topk(5, dim=1)
    assert torch.equal(ids, top.indices) and ids.max() < len(qwen)
    torch.testing.assert_close(probs, top.values / top.values.sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must be the model whose tokenizer was transplanted"):
        teacher_targets(teacher, windows, 10_000, 5, vocab_rows=teacher.config.vocab_size + 1)
    with pytest.raises(ValueError, match="top_k=0"):
        teacher_targets(teacher, windows, 10_000, 0, vocab_rows=len(qwen))


def test_one_teacher_pass_gives_the_top_k_targets_and_the_family_groups(real_tokenizer):
    """The head fit's top-k targets and the share map's groups from one forward pass per window, each equal to what
    it is computed from directly: the teacher's logits at the positions, top-k renormalized / softmax over a family."""
    from xtok.transplant.head_fit import teacher_fit_targets
    from xtok.transplant.share_map import Families

    qwen = real_tokenizer("qwen2.5-coder-0.5b")
    teacher = build_tiny("qwen2", qwen, seed=4)
    windows = token_windows(qwen, ["def f(x):\n    return x * 2\n", "a b c d e f"], tokens=10_000)
    with torch.no_grad():
        logits = torch.cat([teacher(input_ids=w).logits[0, :-1, :len(qwen)] for w in windows])
    nexts = torch.cat([w[0, 1:] for w in windows])
    family_of = torch.full((len(qwen),), -1)
    family_of[nexts] = nexts % 3  # three families holding every next token, with other members
    family_of[torch.arange(0, 60)] = torch.arange(0, 60) % 3
    fam = Families.of(family_of)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    tokens = len(nexts) - 2  # a budget that cuts the last window
    soft, groups = teacher_fit_targets(teacher, windows, tokens, len(qwen), top_k=4, fam=fam)
    assert len(calls) == len(windows)
    top = logits[:tokens].softmax(1).topk(4, dim=1)
    assert torch.equal(soft[0], top.indices)
    torch.testing.assert_close(soft[1], top.values / top.values.sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert sorted(int(p) for g in groups for p in g.positions) == list(range(tokens))
    for g in groups:
        assert (family_of[g.members] == family_of[nexts[g.positions]][:, None]).all()
        torch.testing.assert_close(g.teacher, logits[g.positions][:, g.members].softmax(1), rtol=1e-5, atol=1e-6)
    assert teacher_fit_targets(teacher, windows, tokens, len(qwen)) == (None, None) and len(calls) == len(windows)


def test_a_stronger_pull_keeps_rows_nearer_their_start():
    hidden, targets, w0 = _problem(seed=1)
    moves = [float((fit_rows(hidden, targets, w0, l2=l2, iterations=100)[0] - w0[torch.unique(targets)]).norm())
             for l2 in (0.01, 0.1, 1.0)]
    assert moves[0] > moves[1] > moves[2] > 0


def test_fit_rows_bad_input():
    hidden, targets, w0 = _problem()
    with pytest.raises(ValueError, match="l2=0 must be > 0"):
        fit_rows(hidden, targets, w0, l2=0, iterations=5)
    with pytest.raises(ValueError, match="iterations=0"):
        fit_rows(hidden, targets, w0, l2=0.1, iterations=0)
    with pytest.raises(ValueError, match="teacher_weight=0.5 needs the teacher's targets"):
        fit_rows(hidden, targets, w0, l2=0.1, iterations=5, soft_weight=0.5)
    with pytest.raises(ValueError, match="teacher_weight=1.5 must be between 0"):
        fit_rows(hidden, targets, w0, l2=0.1, iterations=5, soft=_soft(0, len(targets), 10, 2), soft_weight=1.5)


def test_fit_head_on_a_transplant_changes_only_the_seen_rows_and_lowers_its_loss(real_tokenizer):
    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    student, teacher = build_tiny("llama", smol), build_tiny("qwen2", qwen, seed=1)
    model, _ = transplant(student, smol, qwen, teacher_model=teacher, method="mean", head_method="subword-prior",
                          calibration_tokens=256)
    texts = ["def add(a, b):\n    return a + b\n" * 8, "The cat sat on the mat, and the dog sat by the door. " * 6]
    before_w = model.get_output_embeddings().weight.detach().clone()
    inputs = model.get_input_embeddings().weight.detach().clone()
    hidden, targets = final_states(model, token_windows(qwen, texts, tokens=10_000), tokens=10_000)
    ce_model_before = float(F.cross_entropy(hidden @ before_w.T, targets))
    report = fit_head(model, qwen, texts, tokens=10_000, l2=0.1, iterations=20)
    after_w = model.get_output_embeddings().weight.detach()
    seen = torch.unique(targets)
    unseen = torch.ones(len(after_w), dtype=torch.bool)
    unseen[seen] = False
    assert torch.equal(after_w[unseen], before_w[unseen]) and torch.equal(model.get_input_embeddings().weight, inputs)
    assert (after_w[seen] != before_w[seen]).any(1).all()
    assert report["positions"] == len(targets) and report["rows_fitted"] == len(seen)
    # the reported losses are the model's own: its logits over the same positions, computed through the forward pass
    ids = [qwen(t, return_tensors="pt").input_ids for t in texts]
    with torch.no_grad():
        ce = torch.cat([F.cross_entropy(model(input_ids=i).logits[0, :-1], i[0, 1:], reduction="none") for i in ids])
    assert report["ce_before"] == pytest.approx(ce_model_before, abs=1e-4)
    assert report["ce_after"] == pytest.approx(float(ce.mean()), abs=1e-4) and report["ce_after"] < report["ce_before"]


def test_fit_head_refuses_a_tied_head(real_tokenizer):
    smol = real_tokenizer("smollm2-135m")
    tied = build_tiny("llama", smol, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tied to its input embeddings"):
        fit_head(tied, smol, ["some text here"], tokens=10)


def test_transplant_cli_with_a_head_fit(tiny_model_dir, tmp_path):
    student = tiny_model_dir("smollm2-135m", tie_word_embeddings=True)
    teacher = tiny_model_dir("qwen2.5-coder-0.5b")
    out = tmp_path / "out"
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(out), "--k", "4",
               "--head-fit-tokens", "300")
    assert res.returncode == 0, res.stderr
    fit = json.loads((out / REPORT_FILE).read_text())["head_fit"]
    assert fit["positions"] == 300 and fit["ce_after"] < fit["ce_before"] and fit["rows_fitted"] > 10
    # a student whose head is tied and whose two methods are the same cannot have its head fitted: refused, nothing written
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "tied"),
               "--method", "omp", "--head-method", "omp", "--k", "4", "--head-fit-tokens", "300")
    assert res.returncode == 2 and "needs an untied head" in " ".join(res.stderr.split())
    assert not (tmp_path / "tied").exists()
    # the teacher's distribution in the targets: more rows fitted than the text's next tokens name
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "soft"),
               "--k", "4", "--head-fit-tokens", "300", "--head-fit-teacher-weight", "0.5")
    assert res.returncode == 0, res.stderr
    soft = json.loads((tmp_path / "soft" / REPORT_FILE).read_text())["head_fit"]
    assert (soft["teacher_weight"], soft["top_k"]) == (0.5, 8) and soft["rows_fitted"] > fit["rows_fitted"]
    assert soft["ce_before"] == pytest.approx(fit["ce_before"], abs=1e-4)  # the same transplant before the fit
    res = xtok("transplant", "--student", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "nofit"),
               "--k", "4", "--head-fit-teacher-weight", "0.5")
    assert res.returncode == 2 and "needs a head fit" in " ".join(res.stderr.split())
