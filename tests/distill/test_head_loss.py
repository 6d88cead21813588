"""chunked_head_loss against autograd through the whole head at once (float64, so any difference is the math)."""

import pytest
import torch

from xtok.distill.head_loss import chunked_head_loss


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(11, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (2, 7), generator=g)
    return hidden, weight, targets


def _ce(targets, pos, logits):  # (B, c, V): summed cross-entropy of the chunk
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[:, pos].flatten(), reduction="sum")


CHUNKS = [slice(0, 3), slice(6, 9)]  # uneven, one chunk (3..6) left out, the last one shorter than its slice
SMALL = [slice(0, 1), slice(1, 2), slice(2, 3), slice(5, 7)]  # one position at a time, 3..5 left out


@pytest.mark.parametrize("cap", [None, 2.0])
@pytest.mark.parametrize("wants", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("chunks", [CHUNKS, SMALL])
def test_loss_and_gradients_equal_the_whole_head_at_once(cap, wants, chunks):
    hidden, weight, targets = _data()
    h_ref, w_ref = hidden.clone().requires_grad_(wants[0]), weight.clone().requires_grad_(wants[1])
    logits = h_ref @ w_ref.T  # (B, T, V)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    ref = sum(_ce(targets, pos, logits[:, pos]) for pos in chunks)
    (0.37 * ref).backward()  # the incoming gradient scales both

    h, w = hidden.clone().requires_grad_(wants[0]), weight.clone().requires_grad_(wants[1])
    got = chunked_head_loss(h, w, lambda pos, z: _ce(targets, pos, z), chunks, cap)
    (0.37 * got).backward()
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-6, atol=0)
    for mine, theirs, wanted in ((h, h_ref, wants[0]), (w, w_ref, wants[1])):
        if wanted:
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-6, atol=1e-12)
        else:
            assert mine.grad is None
    assert h.grad is None or not h.grad[:, 3:5].any()  # the chunk left out gets no gradient


def _ce_closed_form(targets, pos, logits):
    """The chunk's summed cross-entropy and its gradient softmax − one-hot, written out (no autograd)."""
    t = targets[:, pos]
    logp = torch.log_softmax(logits, -1)
    loss = -logp.gather(-1, t[..., None]).sum()
    return loss, logp.exp() - torch.nn.functional.one_hot(t, logits.shape[-1]).to(logits.dtype)


@pytest.mark.parametrize("cap", [None, 2.0])
def test_a_closed_form_chunk_gradient_gives_the_same_loss_and_gradients(cap):
    """chunk_grad (the loss's own gradient with respect to the logits) in place of autograd through chunk_loss: the
    same loss and gradients of hidden and weight as the whole head at once, the softcap's derivative included."""
    hidden, weight, targets = _data(2)
    h_ref, w_ref = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    logits = h_ref @ w_ref.T
    if cap:
        logits = torch.tanh(logits / cap) * cap
    ref = sum(_ce(targets, pos, logits[:, pos]) for pos in CHUNKS)
    (0.37 * ref).backward()
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)

    def never(pos, z):
        raise AssertionError("chunk_loss must not run when chunk_grad is given")

    got = chunked_head_loss(h, w, never, CHUNKS, cap, chunk_grad=lambda pos, z: _ce_closed_form(targets, pos, z))
    (0.37 * got).backward()
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-6, atol=1e-12)


def test_without_gradients_it_is_the_loss_alone():
    hidden, weight, targets = _data(1)
    calls = []

    def loss(pos, z):
        calls.append(torch.is_grad_enabled())
        return _ce(targets, pos, z)

    with torch.no_grad():
        got = chunked_head_loss(hidden.requires_grad_(True), weight, loss, CHUNKS)
    ref = sum(_ce(targets, pos, (hidden @ weight.T)[:, pos]) for pos in CHUNKS)
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-6, atol=0)
    assert calls == [False, False]  # no gradient taken where none is wanted


def test_width_mismatch_and_overlapping_chunks_are_refused():
    hidden, weight, targets = _data()
    with pytest.raises(ValueError, match="width 5"):
        chunked_head_loss(hidden, weight[:, :4], lambda pos, z: z.sum(), CHUNKS)
    with pytest.raises(ValueError, match="increasing slices"):
        chunked_head_loss(hidden, weight, lambda pos, z: z.sum(), [slice(0, 4), slice(3, 6)])
