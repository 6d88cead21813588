import math
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import build_tiny
from xtok.registry import INIT_METHODS
from xtok.transplant.apply import transplant
from xtok.transplant.calibrate import Calibration, calibrate, calibration_texts
from xtok.transplant.methods import Space, first_pieces
from xtok.vocab.canonical import canonical_vocab
from xtok.vocab.shared import build_token_map


class StubLM(torch.nn.Module):
    """Hidden states and logits fixed per token id: position-independent, so every expectation is known."""

    def __init__(self, hidden: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.hidden, self.table = hidden, logits

    def forward(self, input_ids, output_hidden_states=False, logits_to_keep=0):
        h = self.hidden[input_ids]
        return SimpleNamespace(hidden_states=[h * 0, h], logits=self.table[input_ids][:, -logits_to_keep:])


class StubTok:
    def __call__(self, text, return_tensors=None):
        return SimpleNamespace(input_ids=torch.tensor([[ord(c) % 50 for c in text]]))


def test_calibrate_finds_the_constant_direction_and_the_mean_distribution():
    torch.manual_seed(0)
    d, v_true = 6, torch.randn(6)
    free = torch.randn(50, d)
    hidden = free - (free @ v_true - 1)[:, None] * v_true / v_true.dot(v_true)  # every row has h · v_true = 1
    logits = torch.randn(50, 9)
    texts = ["abcdefghij" * 3, "klmnopqrstuvw" * 2]
    cal = calibrate(StubLM(hidden, torch.zeros(50, 3)), StubTok(), texts, tokens=56,
                    teacher_model=StubLM(torch.randn(50, 4), logits), teacher_tok=StubTok())
    ids = torch.cat([StubTok()(t).input_ids[0] for t in texts])[:56]
    torch.testing.assert_close(hidden[ids] @ cal.direction, torch.ones(56), rtol=0, atol=1e-4)
    assert cal.direction_spread < 1e-4 and cal.tokens == {"student": 56, "teacher": 56}
    want = torch.nn.functional.softmax(logits[ids].double(), dim=-1).mean(0)
    torch.testing.assert_close(cal.teacher_prior, want)
    counts = torch.tensor([3, 0, 1])
    by_counts = calibrate(StubLM(hidden, torch.zeros(50, 3)), StubTok(), texts, tokens=56, counts=counts)
    torch.testing.assert_close(by_counts.teacher_prior, torch.tensor([3.5, 0.5, 1.5], dtype=torch.float64) / 5.5)
    assert by_counts.tokens == {"student": 56, "corpus_tokens": 4}
    with pytest.raises(ValueError, match="at least 12"):
        calibrate(StubLM(hidden, torch.zeros(50, 3)), StubTok(), ["abc"], tokens=56, counts=counts)
    with pytest.raises(ValueError, match="teacher model .* or token counts"):
        calibrate(StubLM(hidden, torch.zeros(50, 3)), StubTok(), texts, tokens=56)


def test_calibration_texts_take_every_domain_in_turn():
    from xtok.corpus import load_corpus

    ds = load_corpus("bundled:train")
    domain_of = dict(zip(ds["text"], ds["domain"]))
    texts = calibration_texts("bundled:train", 2000)
    assert sum(map(len, texts)) >= 2000 * 8
    assert {domain_of[t] for t in texts[:4]} == set(ds["domain"]) and len(set(ds["domain"])) == 4


def test_subword_prior_follows_the_teachers_family_shares(real_tokenizer):
    smol = real_tokenizer("smollm2-135m")
    words = [b" the", b" theocracy", b" thexyz", b" catxyz", b" cat", b"\xe6\x9d"]
    student_of = torch.tensor([smol.convert_tokens_to_ids("Ġthe"), -1, -1, -1, smol.convert_tokens_to_ids("Ġcat"), -1])
    student = torch.randn(len(smol), 5)
    prior = torch.tensor([0.4, 0.1, 0.05, 0.02, 0.3, 0.01], dtype=torch.float64)
    v = torch.randn(5)
    cal = Calibration(v, 0.0, prior, {"student": 1, "teacher": 1}, 0.0)
    sp = Space("output", student, torch.randn(6, 3), torch.tensor([0, 4]), student_of[[0, 4]], words, smol,
               calibration=cal, student_of=student_of)
    new = torch.tensor([1, 2, 3, 5])
    rows = INIT_METHODS.get("subword-prior")(sp, new)
    # independent reference: families by the first piece of the student's own tokenization
    first = {}
    for i, w in enumerate(words):
        pieces = [int(student_of[i])] if student_of[i] >= 0 else smol(w.decode("utf-8", "replace"), add_special_tokens=False)["input_ids"]
        first[i] = pieces[0]
    for r, t in enumerate(new.tolist()):
        if t == 5:  # a partial UTF-8 sequence: its first byte token
            assert torch.isfinite(rows[r]).all()
            continue
        fam = sum(float(prior[i]) for i in first if first[i] == first[t] and i != 5)
        want = student[first[t]] + math.log(float(prior[t]) / fam) * v
        torch.testing.assert_close(rows[r], want)
    assert first[1] == first[2] == first[0] and first[3] == first[4]  # two families of three and two
    with pytest.raises(ValueError, match="head method"):
        INIT_METHODS.get("subword-prior")(Space("input", student, None, new, new, words, smol, calibration=cal), new)


def test_transplant_with_a_subword_prior_head(real_tokenizer):
    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    student, teacher = build_tiny("llama", smol), build_tiny("qwen2", qwen, seed=1)
    with pytest.raises(ValueError, match="head rows only"):
        transplant(student, smol, qwen, teacher_model=teacher, method="subword-prior")
    model, report = transplant(student, smol, qwen, teacher_model=teacher, method="mean", head_method="subword-prior",
                               calibration_tokens=256)
    assert report["untied"] and report["spaces"]["output"]["subword_prior"]["tokens"]["student"] >= 128
    tmap = build_token_map(qwen, smol)
    out = model.get_output_embeddings().weight
    shared = tmap.shared_teacher_ids
    replaced = report["spaces"]["output"]["subword_prior"]["shared_rows_replaced"]
    same = (out[shared] == student.get_output_embeddings().weight[tmap.student_of[shared]]).all(1)
    assert 0 < replaced < len(shared) and int((~same).sum()) == replaced  # first pieces with new family members
    # a new token's logit is its first piece's logit plus log(share ratio) times h · v, at every position
    t = qwen.convert_tokens_to_ids("Ġunbelievable")
    assert tmap.student_of[t] < 0
    p1 = smol(" unbelievable", add_special_tokens=False)["input_ids"][0]
    p1_teacher = int(torch.nonzero(tmap.student_of == p1)[0])
    ids = torch.tensor([qwen("The cat sat on the mat.")["input_ids"]])
    with torch.no_grad():
        o = model(input_ids=ids, output_hidden_states=True)
    diff = o.logits[0, :, t] - o.logits[0, :, p1_teacher]
    v_part = out[t] - out[p1_teacher]
    torch.testing.assert_close(diff, o.hidden_states[-1][0] @ v_part, rtol=1e-4, atol=1e-4)
    base = student.get_output_embeddings().weight[p1]
    ratio = (out[t] - base) / (out[p1_teacher] - base)  # both along v: one vector ratio, the ratio of log shares
    assert float(ratio.std()) < 1e-3 * float(ratio.abs().mean()) and float(ratio.mean()) > 0
    assert (v_part.norm() > 0) and torch.isfinite(out).all()


def test_subword_prior_without_a_teacher_model_takes_an_alignments_counts(real_tokenizer):
    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    student = build_tiny("llama", smol)
    with pytest.raises(ValueError, match="teacher model .* or an alignment"):
        transplant(student, smol, qwen, method="mean", head_method="subword-prior")
    tmap = build_token_map(qwen, smol)
    space = Space("output", student.get_output_embeddings().weight.detach(), None, *tmap.anchors(),
                  canonical_vocab(qwen).bytes_of, smol, student_of=tmap.student_of)
    p1 = first_pieces(space, torch.arange(len(qwen)))
    new = tmap.new_teacher_ids[p1[tmap.new_teacher_ids] >= 0]
    piece = int(torch.mode(p1[new]).values)  # the first piece that starts the most new tokens
    family = torch.nonzero(p1 == piece).flatten()
    a, b = (int(t) for t in new[p1[new] == piece][:2])
    counts = torch.zeros(len(qwen), dtype=torch.long)
    counts[a] = 99
    fake = SimpleNamespace(target=SimpleNamespace(counts=counts), fallback="subword")  # the parts of an Alignment it reads
    model, report = transplant(student, smol, qwen, method="mean", head_method="subword-prior", alignment=fake,
                               calibration_tokens=256)
    assert report["spaces"]["output"]["subword_prior"]["tokens"]["corpus_tokens"] == 99
    base = student.get_output_embeddings().weight[p1[a]]
    out = model.get_output_embeddings().weight
    mass = 99 + 0.5 * len(family)  # add-half smoothing over the family of the first piece
    share_a, share_b = math.log(99.5 / mass), math.log(0.5 / mass)
    # both rows are base + log(share) * v for one direction v: (row - base) / log(share) agree
    torch.testing.assert_close((out[a] - base) / share_a, (out[b] - base) / share_b, rtol=1e-4, atol=1e-5)
    assert (out[a] - base).norm() > 0


def test_subword_prior_families_hold_exactly_the_students_probability(real_tokenizer):
    """At a hidden state with h · v = 1, the members of each first piece p's family (the teacher tokens spelled p ...,
    shared or new) have exp-logits summing to exp(p's student logit): Σ_t exp(h · w_t) = exp(h · w_p)."""
    from xtok.transplant.apply import Plan, space_rows

    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    tmap = build_token_map(qwen, smol)
    torch.manual_seed(0)
    d = 8
    student = torch.randn(len(smol), d) / 3
    v = torch.randn(d)
    prior = torch.rand(len(qwen), dtype=torch.float64) + 1e-3
    cal = Calibration(v, 0.0, prior / prior.sum(), {"teacher": 1}, 0.0)
    tcv = canonical_vocab(qwen)
    anchor_t, anchor_s = tmap.anchors()
    plan = Plan(tmap, "mean", "subword-prior", False, len(qwen),
                dict(anchor_teacher=anchor_t, anchor_student=anchor_s, teacher_bytes=tcv.bytes_of, student_tokenizer=smol,
                     student_of=tmap.student_of))
    rows, report = space_rows(plan, "output", student, None, cal)
    h = torch.randn(3, d).double()
    h = h - ((h @ v.double() - 1) / v.double().dot(v.double()))[:, None] * v.double()  # h · v = 1 exactly
    # independent reference for the families: the student's tokenization of each token's text, its own id if shared
    first = torch.full((len(qwen),), -1)
    by_bytes = {b: i for i, b in enumerate(canonical_vocab(smol).bytes_of) if b}
    texts, where = [], []
    for t, b in enumerate(tcv.bytes_of):
        if tmap.student_of[t] >= 0:
            first[t] = tmap.student_of[t]
        elif b:
            try:
                texts.append(b.decode("utf-8"))
                where.append(t)
            except UnicodeDecodeError:  # a partial UTF-8 sequence: the student's longest token it starts with
                first[t] = next((by_bytes[b[:j]] for j in range(len(b), 0, -1) if b[:j] in by_bytes), -1)
    for t, ids in zip(where, smol(texts, add_special_tokens=False)["input_ids"]):
        first[t] = ids[0] if ids else -1
    pieces = torch.unique(first[first >= 0])
    logits = rows.double() @ h.T  # (V_t, 3)
    mass = torch.zeros((len(smol), 3), dtype=torch.float64).index_add_(0, first[first >= 0], logits[first >= 0].exp()).log()
    want = (student.double() @ h.T)[pieces]
    # float32 rows: each logit is off by ~|h||w| * 2^-24; a log of a sum of such terms by as much
    torch.testing.assert_close(mass[pieces], want, rtol=0, atol=1e-5)
    assert report["subword_prior"]["shared_rows_replaced"] > 1000 and len(pieces) > 20000
