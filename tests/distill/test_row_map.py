"""The donor map of a new_rows stage (map_lr): against Adam on the rows written as W0 + R + D A, resume, bad input."""

import pytest
import torch

from xtok.distill.row_adam import RowAdam
from xtok.distill.row_map import donor_maps

V, D, E = 40, 6, 5
NEW = torch.tensor([3, 7, 8, 20, 21, 22, 30, 35])  # the transplant's new tokens
ROWS = torch.cat([NEW, torch.tensor([1, 2])])  # the rows that train: the new ones and two changed shared rows


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(V, D, generator=g)
    donor = torch.randn(50, E, generator=g) * 3  # the donor's whole matrix (more rows than the model's vocabulary)
    steps = [[(torch.randn(4, D, generator=g), torch.randint(0, V, (4,), generator=g)) for _ in range(2)]
             for _ in range(6)]  # per step two micro-batches of (states, next tokens)
    return w0, donor, steps


def _loss(w: torch.Tensor, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A head's cross-entropy: its gradient reaches every row of ``w``, as a softmax head's does."""
    return torch.nn.functional.cross_entropy(h @ w.t(), y, reduction="sum")


def _ours(w0, donor, steps, lrs=(0.02, 0.05), resume_at=None):
    w = torch.nn.Parameter(w0.clone())
    maps = donor_maps([(w, "output")], NEW, {"output": donor[NEW]})
    mask = torch.zeros(V, 1)
    mask[ROWS] = 1
    w.register_hook(lambda g: g * mask)  # restrict_rows' hook, after the map's
    opt = RowAdam([(w, ROWS)], lr=lrs[0], betas=(0.8, 0.95), eps=1e-6, maps=maps, map_lr=lrs[1])
    for t, micro in enumerate(steps):
        if t == resume_at:  # a new optimizer and maps, from the first one's state_dict (as a checkpoint resumes)
            state = opt.state_dict()
            maps = donor_maps([(w, "output")], NEW, {"output": donor[NEW]})
            opt = RowAdam([(w, ROWS)], lr=lrs[0], betas=(0.8, 0.95), eps=1e-6, maps=maps, map_lr=lrs[1])
            opt.load_state_dict(state)
        w.grad = None
        for h, y in micro:  # gradient accumulation: the map's hook sums its micro-batches
            _loss(w, h, y).backward()
        opt.step()
    return w.detach()


def test_donor_map_is_adam_on_the_rows_written_as_base_plus_rows_plus_donor_times_map():
    """The reference: torch.optim.Adam on R (the trained rows) and A (the map), the matrix being W0 + R + D A with D
    the donor's rows of the new tokens scaled to mean norm 1; its autograd gives A's gradient independently."""
    w0, donor, steps = _data()
    ours = _ours(w0, donor, steps)
    features = donor[NEW] / donor[NEW].norm(dim=1).mean()
    r = torch.nn.Parameter(torch.zeros(len(ROWS), D))
    a = torch.nn.Parameter(torch.zeros(E, D))
    ref = torch.optim.Adam([{"params": [r], "lr": 0.02}, {"params": [a], "lr": 0.05}], betas=(0.8, 0.95), eps=1e-6)
    for micro in steps:
        ref.zero_grad()
        w = w0.index_add(0, ROWS, r).index_add(0, NEW, features @ a)
        sum(_loss(w, h, y) for h, y in micro).backward()
        ref.step()
    want = w0.index_add(0, ROWS, r.detach()).index_add(0, NEW, features @ a.detach())
    # rows are O(1) and move ~0.1 in 6 steps: float32 rounding of sums in another order is ~1e-7 of that
    assert torch.allclose(ours, want, rtol=0, atol=1e-5)
    moved = (ours != w0).any(1)
    assert moved[ROWS].all() and not moved[[i for i in range(V) if i not in ROWS.tolist()]].any()
    # the map is what moves the new rows further than the rows alone would
    alone = _ours(w0, donor, steps, lrs=(0.02, 1e-12))
    assert (ours[NEW] - alone[NEW]).norm() > 0.1 * (alone[NEW] - w0[NEW]).norm()


def test_donor_map_resumes_from_the_optimizer_state():
    w0, donor, steps = _data(1)
    assert torch.equal(_ours(w0, donor, steps, resume_at=3), _ours(w0, donor, steps))


def test_donor_map_bad_input():
    w = torch.nn.Parameter(torch.zeros(V, D))
    with pytest.raises(ValueError, match="30 donor rows for 8 new tokens"):
        donor_maps([(w, "input")], NEW, {"input": torch.ones(30, E)})
    with pytest.raises(ValueError, match="NaN or Inf"):
        donor_maps([(w, "input")], NEW, {"input": torch.full((8, E), float("nan"))})
    with pytest.raises(ValueError, match="all zero"):
        donor_maps([(w, "input")], NEW, {"input": torch.zeros(8, E)})
    maps = donor_maps([(w, "input")], NEW, {"input": torch.ones(8, E)})
    with pytest.raises(ValueError, match="map_lr > 0"):
        RowAdam([(w, ROWS)], maps=maps)
    tied = donor_maps([(w, "input"), (w, "output")], NEW, {"input": torch.ones(8, E), "output": torch.zeros(8, E)})
    assert len(tied) == 1  # a tied matrix has one map, from its first space's donor rows
    short = torch.nn.Parameter(torch.zeros(32, D))  # a matrix shorter than the tokenizer: ids 32 and 35 have no row
    assert donor_maps([(short, "input")], NEW, {"input": torch.ones(8, E)})[0].ids.tolist() == [3, 7, 8, 20, 21, 22, 30]


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        w0, donor, steps = _data(2)
        w = torch.nn.Parameter(w0.clone())
        maps = donor_maps([(w, "output")], NEW, {"output": donor[NEW]})
        opt = RowAdam([(w, ROWS)], lr=1e-12, maps=maps, map_lr=0.05)  # the map alone moves the rows
        for micro in steps:
            h, y = micro[rank]  # each process its own micro-batch: their map gradients differ
            w.grad = None
            _loss(w, h, y).backward()
            opt.step()
        torch.save(w.detach(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_donor_map_averages_its_gradient_over_processes(tmp_path):
    """Two gloo processes, each with its own micro-batch: their rows stay equal, and equal one process's step on the
    mean of the two gradients (what DDP does for the model's own gradients)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(a, b)
    w0, donor, steps = _data(2)
    w = torch.nn.Parameter(w0.clone())
    opt = RowAdam([(w, ROWS)], lr=1e-12, maps=donor_maps([(w, "output")], NEW, {"output": donor[NEW]}), map_lr=0.05)
    for micro in steps:
        w.grad = None
        (sum(_loss(w, h, y) for h, y in micro) / 2).backward()
        opt.step()
    assert torch.allclose(a, w.detach(), rtol=0, atol=1e-5) and not torch.equal(a, w0)
