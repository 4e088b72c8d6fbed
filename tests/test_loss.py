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


LN2, LN3 = math.log(2.0), math.log(3.0)


def test_cross_entropy_with_codes_by_hand():
    # tau = 0.1; scores / tau: row 0 (ln 3, 0) -> p = (3/4, 1/4), row 1 (0, 0) -> p = (1/2, 1/2)
    # row 0, q = (1, 0): -ln 3/4 = 2 ln 2 - ln 3; row 1, q = (0, 1): -ln 1/2 = ln 2
    # mean over rows: (3 ln 2 - ln 3) / 2
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scores = torch.tensor([[0.1 * LN3, 0.0], [0.0, 0.0]])
    loss = cross_entropy_with_codes(codes, scores, 0.1)
    assert loss.item() == pytest.approx((3 * LN2 - LN3) / 2, rel=1e-6)
    # soft codes q = (1/2, 1/2) on row 0: -(ln 3/4 + ln 1/4) / 2 = 2 ln 2 - ln 3 / 2
    soft = cross_entropy_with_codes(torch.tensor([[0.5, 0.5]]), scores[:1], 0.1)
    assert soft.item() == pytest.approx(2 * LN2 - LN3 / 2, rel=1e-6)


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


# K = 2, tau = 1, one image; scores (logits) and their softmax:
# view 0 (ln 3, 0) -> p0 = (3/4, 1/4); view 1 (0, 0) -> p1 = (1/2, 1/2); view 2 (0, ln 3) -> p2 =
# (1/4, 3/4). Views 0 and 1 are the assigned crops, with codes q0 = (1, 0) and q1 = (0, 1).
SWAP_CODES = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
SWAP_SCORES = [torch.tensor([[LN3, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, LN3]])]
# Each target's term (the mean over the views that predict it):
# q0 predicted by views 1 and 2: (-ln 1/2 - ln 1/4) / 2 = (ln 2 + 2 ln 2) / 2 = 3/2 ln 2
# q1 predicted by views 0 and 2: (-ln 1/4 - ln 3/4) / 2 = (2 ln 2 + 2 ln 2 - ln 3) / 2
#                                = 2 ln 2 - 1/2 ln 3


def test_swapped_terms_pair_each_view_with_the_other_views_codes():
    got = swapped_prediction_loss(SWAP_CODES, SWAP_SCORES, [0, 1], 1.0)
    # the default reduction sums the targets' terms: 7/2 ln 2 - 1/2 ln 3
    assert got.item() == pytest.approx(3.5 * LN2 - 0.5 * LN3, rel=1e-6)
    # the naive (unswapped) pairing, q0 with p0 and q1 with p1, is -ln 3/4 - ln 1/2 = 3 ln 2 - ln 3
    assert got.item() != pytest.approx(3 * LN2 - LN3, rel=1e-3)


def test_pooling_modes_differ_and_softmax_mode_is_a_distribution():
    # B = 2 images, M = 2 patches, K = 2, tau = 0.5, so scores / tau are the logits
    # image 0: patch logits (ln 3, 0) and (0, 0) -> softmax (3/4, 1/4) and (1/2, 1/2)
    # image 1: patch logits (0, ln 3) and (0, ln 3) -> softmax (1/4, 3/4) twice
    scores = 0.5 * torch.tensor([[[LN3, 0.0], [0.0, 0.0]], [[0.0, LN3], [0.0, LN3]]])
    soft = pool_patch_predictions(scores, "softmax", 0.5)
    raw = pool_patch_predictions(scores, "scores", 0.5)
    # softmax mode: the mean of the patches' distributions, (5/8, 3/8) and (1/4, 3/4)
    torch.testing.assert_close(soft, torch.tensor([[5 / 8, 3 / 8], [1 / 4, 3 / 4]]))
    # scores mode: the mean of the raw scores (no temperature), (ln 3 / 4, 0) and (0, ln 3 / 2)
    torch.testing.assert_close(raw, torch.tensor([[LN3 / 4, 0.0], [0.0, LN3 / 2]]))
    with pytest.raises(ValueError, match="CROSS_MU"):
        pool_patch_predictions(scores, "max", 0.1)


# L_cross, K_0 = 2, tau = 1, one image: global codes Q_0 = (1, 0), Q'_0 = (1/2, 1/2); projected
# patch predictions g = (ln 3, 0) -> (3/4, 1/4) and g' = (0, 0) -> (1/2, 1/2). The four terms:
# CE(Q_0, g) = -ln 3/4 = 2 ln 2 - ln 3     CE(Q'_0, g) = -(ln 3/4 + ln 1/4) / 2 = 2 ln 2 - ln 3 / 2
# CE(Q_0, g') = ln 2                       CE(Q'_0, g') = ln 2
CROSS_CODES = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
CROSS_PROJECTED = [torch.tensor([[LN3, 0.0]]), torch.tensor([[0.0, 0.0]])]


def test_cross_scale_loss_sums_both_views():
    # paired: CE(Q_0, g) + CE(Q'_0, g') = 2 ln 2 - ln 3 + ln 2 = 3 ln 2 - ln 3
    got = cross_scale_loss(CROSS_CODES, CROSS_PROJECTED, 1.0)
    assert got.item() == pytest.approx(3 * LN2 - LN3, rel=1e-6)


def test_collapse_signals():
    collapsed = torch.zeros(8, 5)
    collapsed[:, 2] = 1
    spread = torch.eye(5)
    assert code_usage(collapsed) == pytest.approx(0.2)
    assert code_usage(spread) == pytest.approx(1.0)
    # confident predictions have low entropy, uniform ones (loss at ln K) have entropy 1
    assert prediction_entropy(spread * 10, 0.1) < 0.01
    assert prediction_entropy(torch.zeros(8, 5), 0.1) == pytest.approx(1.0)


def test_swapped_prediction_paper_sums_release_averages_the_targets():
    paper = swapped_prediction_loss(SWAP_CODES, SWAP_SCORES, [0, 1], 1.0, "sum")
    release = swapped_prediction_loss(SWAP_CODES, SWAP_SCORES, [0, 1], 1.0, "mean")
    # the two targets' terms (above SWAP_CODES): summed 7/2 ln 2 - 1/2 ln 3 (~2.0767),
    # averaged 7/4 ln 2 - 1/4 ln 3 (~1.0383)
    assert paper.item() == pytest.approx(3.5 * LN2 - 0.5 * LN3, rel=1e-6)
    assert release.item() == pytest.approx(1.75 * LN2 - 0.25 * LN3, rel=1e-6)
    # with tau = 0.5 the same scores are twice as sharp: view 0 -> (9/10, 1/10), view 2 ->
    # (1/10, 9/10); q0: (ln 2 + ln 10) / 2, q1: (ln 10 + ln 10/9) / 2, summed
    # (ln 2 + 3 ln 10 - 2 ln 3) / 2
    sharp = swapped_prediction_loss(SWAP_CODES, SWAP_SCORES, [0, 1], 0.5, "sum")
    expected = (LN2 + 3 * math.log(10.0) - 2 * LN3) / 2
    assert sharp.item() == pytest.approx(expected, rel=1e-6)


def test_cross_scale_paper_pairs_release_predicts_both_global_codes():
    paper = cross_scale_loss(CROSS_CODES, CROSS_PROJECTED, 1.0, "paired", "sum")
    release = cross_scale_loss(CROSS_CODES, CROSS_PROJECTED, 1.0, "both", "mean")
    # paper: CE(Q_0, g) + CE(Q'_0, g') = 3 ln 2 - ln 3 (~0.9808)
    assert paper.item() == pytest.approx(3 * LN2 - LN3, rel=1e-6)
    # release: the four terms averaged, (2 ln 2 - ln 3 + 2 ln 2 - ln 3 / 2 + ln 2 + ln 2) / 4
    # = (6 ln 2 - 3/2 ln 3) / 4 = 3/2 ln 2 - 3/8 ln 3 (~0.6278)
    assert release.item() == pytest.approx(1.5 * LN2 - 0.375 * LN3, rel=1e-6)
    # the other two combinations: paired and averaged, both and summed
    paired_mean = cross_scale_loss(CROSS_CODES, CROSS_PROJECTED, 1.0, "paired", "mean")
    both_sum = cross_scale_loss(CROSS_CODES, CROSS_PROJECTED, 1.0, "both", "sum")
    assert paired_mean.item() == pytest.approx((3 * LN2 - LN3) / 2, rel=1e-6)
    assert both_sum.item() == pytest.approx(6 * LN2 - 1.5 * LN3, rel=1e-6)


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
