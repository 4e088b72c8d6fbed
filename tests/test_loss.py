import math

import pytest
import torch
import torch.nn.functional as F

from ssprl_d2.modeling.loss import (
    code_usage,
    cross_entropy_with_codes,
    cross_scale_loss,
    pool_patch_predictions,
    prediction_entropy,
    swapped_prediction_loss,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_cross_entropy_of_one_hot_codes_matches_torch():
    scores = _rand(5, 7)
    target = torch.tensor([0, 3, 6, 2, 2])
    codes = F.one_hot(target, 7).float()
    expected = F.cross_entropy(scores / 0.1, target)
    torch.testing.assert_close(cross_entropy_with_codes(codes, scores, 0.1), expected)


def test_confident_matching_prediction_gives_near_zero_loss():
    target = torch.arange(4)
    codes = F.one_hot(target, 4).float()
    scores = F.one_hot(target, 4).float()  # cosine 1 on the right prototype, 0 elsewhere
    loss = swapped_prediction_loss([codes, codes], [scores, scores], [0, 1], 0.01)
    assert loss < 1e-3


def test_uniform_prediction_gives_two_ln_k():
    codes = F.one_hot(torch.arange(4), 4).float()
    scores = torch.zeros(4, 4)
    loss = swapped_prediction_loss([codes, codes], [scores, scores], [0, 1], 0.1)
    assert loss.item() == pytest.approx(2 * math.log(4), rel=1e-6)


def test_swapped_terms_pair_each_view_with_the_other_views_codes():
    q0, q1 = F.one_hot(torch.tensor([0, 1]), 3).float(), F.one_hot(torch.tensor([2, 2]), 3).float()
    s0, s1, s2 = _rand(2, 3, seed=1), _rand(2, 3, seed=2), _rand(2, 3, seed=3)
    tau = 0.1
    got = swapped_prediction_loss([q0, q1], [s0, s1, s2], [0, 1], tau)
    ce = lambda q, s: cross_entropy_with_codes(q, s, tau)  # noqa: E731
    expected = (ce(q0, s1) + ce(q0, s2)) / 2 + (ce(q1, s0) + ce(q1, s2)) / 2
    torch.testing.assert_close(got, expected)
    # the naive (unswapped) pairing is a different number
    assert not torch.isclose(got, (ce(q0, s0) + ce(q1, s1)))


def test_pooling_modes_differ_and_softmax_mode_is_a_distribution():
    scores = _rand(3, 4, 5)
    soft = pool_patch_predictions(scores, "softmax", 0.1)
    raw = pool_patch_predictions(scores, "scores", 0.1)
    torch.testing.assert_close(soft.sum(1), torch.ones(3))
    torch.testing.assert_close(raw, scores.mean(1))
    with pytest.raises(ValueError, match="CROSS_MU"):
        pool_patch_predictions(scores, "max", 0.1)


def test_cross_scale_loss_sums_both_views():
    q = [F.softmax(_rand(4, 6, seed=s), 1) for s in (1, 2)]
    g = [_rand(4, 6, seed=s) for s in (3, 4)]
    got = cross_scale_loss(q, g, 0.1)
    expected = cross_entropy_with_codes(q[0], g[0], 0.1) + cross_entropy_with_codes(q[1], g[1], 0.1)
    torch.testing.assert_close(got, expected)


def test_collapse_signals():
    collapsed = torch.zeros(8, 5)
    collapsed[:, 2] = 1
    spread = torch.eye(5)
    assert code_usage(collapsed) == pytest.approx(0.2)
    assert code_usage(spread) == pytest.approx(1.0)
    # confident predictions have low entropy, uniform ones (loss at ln K) have entropy 1
    assert prediction_entropy(spread * 10, 0.1) < 0.01
    assert prediction_entropy(torch.zeros(8, 5), 0.1) == pytest.approx(1.0)


def _ce(q, s, tau):
    """CE(q, softmax(s / tau)) of one row, by hand."""
    logits = [v / tau for v in s]
    log_z = math.log(sum(math.exp(v) for v in logits))
    return -sum(qk * (lk - log_z) for qk, lk in zip(q, logits))


# one image, K = 3: two large crops (0, 1) whose codes are targets, one small crop (2)
Q = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
S = [[0.9, -0.2, 0.1], [0.3, 0.5, -0.4], [-0.6, 0.2, 0.8]]
G = [[0.2, 0.4, -0.1], [0.7, -0.3, 0.0]]  # g(mu(P_s)) of the two patch views
TAU = 0.5


def test_swapped_prediction_paper_sums_release_averages_the_targets():
    t = lambda rows: [torch.tensor([r]) for r in rows]  # noqa: E731
    per_target = [
        (_ce(Q[0], S[1], TAU) + _ce(Q[0], S[2], TAU)) / 2,  # crop 0's codes, predicted by 1, 2
        (_ce(Q[1], S[0], TAU) + _ce(Q[1], S[2], TAU)) / 2,  # crop 1's codes, predicted by 0, 2
    ]
    paper = swapped_prediction_loss(t(Q), t(S), [0, 1], TAU, "sum")
    release = swapped_prediction_loss(t(Q), t(S), [0, 1], TAU, "mean")
    assert paper.item() == pytest.approx(sum(per_target), rel=1e-6)
    assert release.item() == pytest.approx(sum(per_target) / 2, rel=1e-6)


def test_cross_scale_paper_pairs_release_predicts_both_global_codes():
    t = lambda rows: [torch.tensor([r]) for r in rows]  # noqa: E731
    paper = cross_scale_loss(t(Q), t(G), TAU, "paired", "sum")
    release = cross_scale_loss(t(Q), t(G), TAU, "both", "mean")
    expected_paper = _ce(Q[0], G[0], TAU) + _ce(Q[1], G[1], TAU)
    expected_release = sum(_ce(q, g, TAU) for q in Q for g in G) / 4
    assert paper.item() == pytest.approx(expected_paper, rel=1e-6)
    assert release.item() == pytest.approx(expected_release, rel=1e-6)
    assert paper.item() != pytest.approx(release.item(), rel=1e-3)


def test_unknown_reduction_or_targets_are_errors_naming_the_value():
    q, s = [torch.ones(1, 3) / 3] * 2, [torch.zeros(1, 3)] * 2
    with pytest.raises(ValueError, match="'median'"):
        swapped_prediction_loss(q, s, [0, 1], 0.1, "median")
    with pytest.raises(ValueError, match="'all'"):
        cross_scale_loss(q, s, 0.1, "all")


def test_swap_accuracy_counts_arg_max_agreements_over_every_trained_pair():
    from ssprl_d2.modeling.loss import swap_accuracy

    # 3 views of 2 images, K = 3; codes of views 0 and 1 are the targets
    codes = [torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]]),
             torch.tensor([[0.1, 0.8, 0.1], [0.0, 0.1, 0.9]])]
    scores = [
        torch.tensor([[0.1, 0.5, 0.2], [0.0, 0.1, 0.7]]),  # predicts 1, 2
        torch.tensor([[0.9, 0.0, 0.1], [0.3, 0.2, 0.1]]),  # predicts 0, 0
        torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.0, 0.4]]),  # predicts 0, 2
    ]
    # targets of view 0: (0, 2) -> view 1 hits 1 of 2, view 2 hits 2 of 2
    # targets of view 1: (1, 2) -> view 0 hits 2 of 2, view 2 hits 1 of 2
    assert swap_accuracy(codes, scores, [0, 1]) == pytest.approx(6 / 8)
    assert swap_accuracy(codes[:1], scores, [0]) == pytest.approx(3 / 4)


def test_code_usage_counts_the_distinct_arg_max_codes_by_hand():
    # K = 7; the rows' arg-max codes are 3, 0, 3, 5, 0: three distinct prototypes of seven
    codes = F.one_hot(torch.tensor([3, 0, 3, 5, 0]), 7).float() * 0.9 + 0.01
    usage = code_usage(codes)
    assert usage.shape == () and usage.device == codes.device
    assert float(usage) == 3 / 7  # the same Python float as the count divided on the host
    assert float(code_usage(codes[:1])) == 1 / 7
