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


def reference_first_pieces(qwen, smol, tmap, tcv) -> torch.Tensor:
    """Independent of xtok's first_pieces: the student's tokenization of each teacher token's text, its own id if
    shared, the student's longest token a partial UTF-8 sequence starts with; -1 for none."""
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
            except UnicodeDecodeError:
                first[t] = next((by_bytes[b[:j]] for j in range(len(b), 0, -1) if b[:j] in by_bytes), -1)
    for t, ids in zip(where, smol(texts, add_special_tokens=False)["input_ids"]):
        first[t] = ids[0] if ids else -1
    return first


def family_rows(real_tokenizer, head_context: float = 0.0, context=None, donor=None, seed: int = 0):
    """subword-prior head rows of a random SmolLM2-shaped student with Qwen's tokenizer, and what a check needs."""
    from xtok.transplant.apply import Plan, space_rows

    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    tmap = build_token_map(qwen, smol)
    torch.manual_seed(seed)
    d = 8
    student = torch.randn(len(smol), d) / 3
    v = torch.randn(d)
    prior = torch.rand(len(qwen), dtype=torch.float64) + 1e-3
    cal = Calibration(v, 0.0, prior / prior.sum(), {"teacher": 1}, 0.0, context)
    tcv = canonical_vocab(qwen)
    anchor_t, anchor_s = tmap.anchors()
    plan = Plan(tmap, "mean", "subword-prior", False, len(qwen),
                dict(anchor_teacher=anchor_t, anchor_student=anchor_s, teacher_bytes=tcv.bytes_of, student_tokenizer=smol,
                     student_of=tmap.student_of, head_context=head_context))
    rows, report = space_rows(plan, "output", student, donor, cal)
    first = reference_first_pieces(qwen, smol, tmap, tcv)
    return SimpleNamespace(rows=rows, report=report, student=student, v=v, prior=prior / prior.sum(), first=first,
                           smol=smol, qwen=qwen)


def on_plane(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``h`` moved along ``v`` so that h · v = 1 exactly (float64)."""
    h, v = h.double(), v.double()
    return h - ((h @ v - 1) / v.dot(v))[..., None] * v


def test_subword_prior_families_hold_exactly_the_students_probability(real_tokenizer):
    """At a hidden state with h · v = 1, the members of each first piece p's family (the teacher tokens spelled p ...,
    shared or new) have exp-logits summing to exp(p's student logit): Σ_t exp(h · w_t) = exp(h · w_p)."""
    f = family_rows(real_tokenizer)
    h = on_plane(torch.randn(3, 8), f.v)
    first = f.first
    pieces = torch.unique(first[first >= 0])
    logits = f.rows.double() @ h.T  # (V_t, 3)
    mass = torch.zeros((len(f.smol), 3), dtype=torch.float64).index_add_(0, first[first >= 0], logits[first >= 0].exp()).log()
    want = (f.student.double() @ h.T)[pieces]
    # float32 rows: each logit is off by ~|h||w| * 2^-24; a log of a sum of such terms by as much
    torch.testing.assert_close(mass[pieces], want, rtol=0, atol=1e-5)
    assert f.report["subword_prior"]["shared_rows_replaced"] > 1000 and len(pieces) > 20000


def test_subword_prior_context_term_shifts_shares_within_each_family(real_tokenizer):
    """head_context alpha: a member t of p's family gets alpha · (A (h - h̄)) · (u_t - ū_p) on top of its static logit
    (u: the teacher's head rows, ū_p their prior-weighted family mean): zero at h̄, prior-weighted sum zero over each
    family at every h, so the family's mass is kept to first order, and at h̄ exactly."""
    from xtok.transplant.calibrate import ContextMap

    d_t, alpha = 5, 0.7
    gen = torch.Generator().manual_seed(3)
    qwen_rows = len(real_tokenizer("qwen2.5-coder-0.5b"))
    donor = torch.randn(qwen_rows, d_t, generator=gen)
    weight = torch.randn(d_t, 8, generator=gen)
    static = family_rows(real_tokenizer)
    h_bar = on_plane(torch.randn(8, generator=gen), static.v).float()
    cm = ContextMap(weight, h_bar, 0.01, 0.5, 100)
    f = family_rows(real_tokenizer, head_context=alpha, context=cm, donor=donor)
    first, prior = f.first, f.prior
    ok = first >= 0
    h = on_plane(torch.randn(4, 8, generator=gen), f.v)
    # independent reference, in float64: family means of the teacher rows by the reference families
    fam_mass = torch.zeros(len(f.smol), dtype=torch.float64).index_add_(0, first[ok], prior[ok])
    u_bar = torch.zeros(len(f.smol), d_t, dtype=torch.float64).index_add_(0, first[ok], prior[ok, None] * donor[ok].double())
    u_bar = u_bar / fam_mass.clamp_min(1e-300)[:, None]
    teacher_states = (h - h_bar.double()) @ weight.double().T  # (4, d_t): A (h - h̄)
    want_term = ((donor[ok].double() - u_bar[first[ok]]) @ teacher_states.T) * alpha  # (members, 4)
    got_term = (f.rows.double() - static.rows.double())[ok] @ h.T
    # float32 rows of size ~|A||u| each: logits off by ~1e-5 of their scale
    scale = float(want_term.abs().max())
    torch.testing.assert_close(got_term, want_term, rtol=0, atol=1e-5 * scale)
    members = torch.bincount(first[ok], minlength=len(f.smol))
    r = prior[ok] / fam_mass[first[ok]]
    weighted = torch.zeros(len(f.smol), 4, dtype=torch.float64).index_add_(0, first[ok], r[:, None] * got_term)
    assert float(weighted[members > 1].abs().max()) < 1e-5 * scale  # Σ_t r_t term_t(h) = 0 in every family
    assert float(want_term.abs().mean()) > 0.1  # the term is not trivially zero
    # at h̄ the rows are the static ones: the family mass identity holds exactly there
    at_bar = (f.rows.double() - static.rows.double()) @ h_bar.double()
    assert float(at_bar.abs().max()) < 1e-5 * scale
    assert f.report["subword_prior"]["head_context"] == alpha


class BytesLM(torch.nn.Module):
    """Hidden state at each position: the UTF-8 bytes its tokens have spelled so far (and a constant 1)."""

    def __init__(self, tok):
        super().__init__()
        self.size = torch.tensor([len(b or b"") for b in canonical_vocab(tok).bytes_of], dtype=torch.float32)

    def forward(self, input_ids, output_hidden_states=False, logits_to_keep=0):
        spelled = self.size[input_ids].cumsum(-1)
        h = torch.stack([spelled, torch.ones_like(spelled)], -1)
        return SimpleNamespace(hidden_states=[h], logits=h[:, -logits_to_keep:])


@pytest.mark.parametrize("pair", [("smollm2-135m", "qwen2.5-coder-0.5b"), ("smollm2-135m", "gemma3-270m")])
def test_context_map_pairs_positions_that_have_read_the_same_bytes(real_tokenizer, pair):
    """The context map's pairs are exactly the byte offsets where both tokenizations end a token on a character
    boundary (a character split over byte tokens ends once), and the states paired have read the same bytes."""
    from xtok.transplant.calibrate import RIDGES, _final_states, fit_context_map, paired_states

    s_tok, t_tok = (real_tokenizer(n) for n in pair)
    texts = ["déjà vu: 日本語のテキスト, x = f(12345) + 0.5;\n\tif x:\n        return 'ok'  # ünïcödé 🙂",
             "Ein Satz mit Umlauten: Größe, Übermaß. 中文也可以。"]
    items = {}
    for name, tok in (("s", s_tok), ("t", t_tok)):
        items[name] = list(_final_states(BytesLM(tok), tok, texts, 10**6, 512, logits=False, ends=True))
    hs, ht = paired_states(items["s"], items["t"])
    # independent reference: cumulative canonical bytes after each token, on each side, at character boundaries
    want = []
    for text in texts:
        bounds = {len(text[:c].encode()) for c in range(1, len(text) + 1)}
        ends = []
        for tok in (s_tok, t_tok):
            size = [len(b or b"") for b in canonical_vocab(tok).bytes_of]
            ends.append(set(torch.tensor([size[i] for i in tok(text)["input_ids"]]).cumsum(0).tolist()))
        want += sorted(ends[0] & ends[1] & bounds)
    assert hs[:, 0].tolist() == ht[:, 0].tolist() == want
    assert len(want) > 40
    # a teacher state that is an affine function of the student's is recovered
    h = torch.randn(400, 3, generator=torch.Generator().manual_seed(0))
    a, b = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]), torch.tensor([0.3, -1.0])
    cm = fit_context_map(h, h @ a.T + b)
    assert cm.r2 > 0.9999 and cm.ridge == RIDGES[0]  # no noise: the smallest ridge wins
    torch.testing.assert_close(cm.weight, a, rtol=0, atol=1e-3)  # ridge 1e-4 x mean eigenvalue: a 1e-4 shrink
    torch.testing.assert_close(cm.student_mean, h.mean(0))
    with pytest.raises(ValueError, match="at least 6"):
        fit_context_map(h[:5], h[:5])


def test_transplant_with_head_context_changes_only_the_head_rows_of_families(real_tokenizer):
    from xtok.config import TransplantConfig

    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    student, teacher = build_tiny("llama", smol), build_tiny("qwen2", qwen, seed=1)
    kw = dict(teacher_model=teacher, method="mean", head_method="subword-prior", calibration_tokens=512)
    static, _ = transplant(student, smol, qwen, **kw)
    moved, report = transplant(student, smol, qwen, head_context=0.5, **kw)
    sp = report["spaces"]["output"]["subword_prior"]
    assert sp["head_context"] == 0.5 and sp["context_map"]["positions"] >= 2 * student.config.hidden_size
    assert torch.equal(moved.get_input_embeddings().weight, static.get_input_embeddings().weight)
    changed = (moved.get_output_embeddings().weight != static.get_output_embeddings().weight).any(1)
    tmap = build_token_map(qwen, smol)
    assert int(changed.sum()) > 1000 and not changed[tmap.shared_teacher_ids].all()  # lone shared pieces keep theirs
    with pytest.raises(ValueError, match="head_context=0.5 is a term of the subword-prior head"):
        TransplantConfig(student="s", teacher="t", head_method="focus", head_context=0.5)
    with pytest.raises(ValueError, match="head_context=0.5 is a term of the subword-prior head"):
        TransplantConfig(student="s", teacher="t", teacher_tokenizer_only=True, alignment="a", method="tokalign",
                         head_context=0.5)
    with pytest.raises(ValueError, match="context map needs the teacher model"):
        calibrate(student, smol, ["some text"], 64, counts=torch.ones(3), context=True)


def test_calibration_in_bf16_stays_within_bf16_rounding_of_float32(real_tokenizer, monkeypatch):
    """bf16 autocast changes only the products' rounding (8-bit mantissa: 2^-8 relative per product at worst): on a
    tiny pair whose logits are O(1) each logit moves by about 2^-8 at most, so the prior by less in total variation."""
    import xtok.utils.hardware as hw
    from xtok.transplant.apply import calibrate_models

    smol, qwen = real_tokenizer("smollm2-135m"), real_tokenizer("qwen2.5-coder-0.5b")
    student, teacher = build_tiny("llama", smol), build_tiny("qwen2", qwen, seed=1)
    kw = dict(teacher_model=teacher, calibration_tokens=256, head_context=0.5)
    f32 = calibrate_models(student, smol, qwen, **kw)
    bf16 = calibrate_models(student, smol, qwen, precision="bf16", **kw)
    assert f32.report()["precision"] == "float32" and bf16.report()["precision"] == "bf16"
    tv = 0.5 * float((f32.teacher_prior - bf16.teacher_prior).abs().sum())
    assert 0 < tv < 2**-8  # it ran in bf16, and only rounding moved (8e-5 here)
    assert bf16.context.positions == f32.context.positions
    monkeypatch.setattr(hw, "fast_bf16", lambda: False)
    assert calibrate_models(student, smol, qwen, precision="auto", **kw).report()["precision"] == "float32"
