import itertools

from ssprl_d2.data.build import PositionSampler, sample_seed


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_covers_every_image_once_per_epoch():
    s = PositionSampler(size=10, global_batch=4, seed=3)
    items = _take(s, 20)
    assert [p for _, p in items] == list(range(20))
    assert sorted(i for i, _ in items[:10]) == list(range(10))
    assert sorted(i for i, _ in items[10:]) == list(range(10))
    assert [i for i, _ in items[:10]] != [i for i, _ in items[10:]]  # reshuffled per epoch


def test_sampler_resumes_exactly_at_an_iteration():
    full = _take(PositionSampler(size=7, global_batch=4, seed=1), 40)
    resumed = PositionSampler(size=7, global_batch=4, seed=1)
    resumed.start_iter = 5
    assert _take(resumed, 20) == full[20:40]


def test_ranks_split_each_global_batch():
    ranks = [_take(PositionSampler(9, 6, 0, rank=r, world_size=2), 9) for r in range(2)]
    # iteration t: rank 0 has positions 6t..6t+2, rank 1 has 6t+3..6t+5
    assert [p for _, p in ranks[0][:6]] == [0, 1, 2, 6, 7, 8]
    assert [p for _, p in ranks[1][:6]] == [3, 4, 5, 9, 10, 11]


def test_sample_seed_depends_on_seed_and_position():
    assert sample_seed(0, 5) == sample_seed(0, 5)
    assert len({sample_seed(0, p) for p in range(100)}) == 100
    assert sample_seed(0, 5) != sample_seed(1, 5)
