import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssprl_d2.modeling.sinkhorn import sinkhorn


def _scores(b=64, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, 16, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 16, generator=g), dim=1)
    return z @ c.t()


def test_sinkhorn_marginals_are_uniform():
    scores = _scores(b=64, k=10)
    q = sinkhorn(scores, iterations=50, epsilon=0.05)
    assert q.shape == (64, 10)
    # every sample is a distribution; with many iterations each prototype gets B / K samples
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(dim=0), torch.full((10,), 6.4), atol=1e-2, rtol=0)


def test_sinkhorn_three_iterations_is_nearly_balanced_and_sharp():
    scores = _scores(b=128, k=8)
    q = sinkhorn(scores, iterations=3, epsilon=0.05)
    col = q.sum(dim=0) / 128
    assert (col - 1 / 8).abs().max() < 0.05
    # codes follow the scores: the arg-max code is usually the arg-max score
    agree = (q.argmax(1) == scores.argmax(1)).float().mean()
    assert agree > 0.5


def test_sinkhorn_has_no_gradient_and_is_finite_for_extreme_scores():
    scores = (_scores() * 1000).requires_grad_()
    q = sinkhorn(scores, epsilon=0.05)
    assert not q.requires_grad
    assert torch.isfinite(q).all()


def test_sinkhorn_rejects_wrong_rank():
    with pytest.raises(ValueError, match="expects"):
        sinkhorn(torch.zeros(3, 4, 5))


def _worker(rank, world, init_file, scores, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        part = scores.chunk(world)[rank]
        q = sinkhorn(part, iterations=3, epsilon=0.05)
        torch.save(q, os.path.join(out_dir, f"q{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sinkhorn_two_processes_equal_one_process_on_concatenated_batch():
    scores = _scores(b=32, k=6, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), scores, tmp), nprocs=2, join=True)
        q_dist = torch.cat([torch.load(os.path.join(tmp, f"q{r}.pt")) for r in range(2)])
    q_single = sinkhorn(scores, iterations=3, epsilon=0.05, distributed=False)
    torch.testing.assert_close(q_dist, q_single, atol=1e-6, rtol=1e-5)
