"""GroupedBatchSampler properties: no group split, equal micro-batches on all ranks, one global
plan, hard negatives present, determinism, resume (also with another world size); the
paraphrase choice per epoch."""
import random
from collections import Counter

import pytest

from coin.data_tools.sampler import GroupedBatchSampler, paraphrase_index, paraphrase_indices


def _groups(sizes, seed=0):
    groups = [f"g{g}" for g, n in enumerate(sizes) for _ in range(n)]
    random.Random(seed).shuffle(groups)  # members of a group are scattered in the dataset
    return groups


def _ranks(groups, b, w, seed=0, drop_last=True):
    return [GroupedBatchSampler(groups, b, w, r, seed, drop_last) for r in range(w)]


def _configs():
    rng = random.Random(1234)
    for trial in range(120):
        sizes = [rng.choice([1, 2, 2, 3, 4, 5, 8, 13]) for _ in range(rng.randint(1, 40))]
        yield trial, _groups(sizes, trial), rng.choice([1, 2, 3, 4, 8]), rng.choice([1, 2, 3, 4]), rng.random() < 0.7


def test_equal_micro_batches_on_every_rank_and_one_global_plan():
    for trial, groups, b, w, drop_last in _configs():
        samplers = _ranks(groups, b, w, seed=trial, drop_last=drop_last)
        per_rank = [list(s) for s in samplers]
        n = len(samplers[0])
        assert all(len(s) == n and len(batches) == n for s, batches in zip(samplers, per_rank)), trial
        assert all(len(batch) == b for batches in per_rank for batch in batches), trial
        plan = samplers[0].global_micro_batches()
        for step in range(n):  # global batch at step s = concatenation over ranks of their s-th micro-batch
            assert [per_rank[r][step] for r in range(w)] == plan[step * w:(step + 1) * w]
        used = [i for batches in per_rank for batch in batches for i in batch]
        if drop_last:
            assert len(used) == len(set(used)) and len(used) >= len(groups) - (b - 1) - (w - 1) * b
        else:
            assert set(used) == set(range(len(groups)))


def test_small_groups_are_never_split_when_the_data_allow_it():
    # sizes 1, 2 and 4 always pack exactly into micro-batches of 4
    groups = _groups([random.Random(i).choice([1, 2, 2, 4]) for i in range(300)])
    sampler = _ranks(groups, 4, 2)[0]
    for epoch in range(3):
        where = {}
        for k, batch in enumerate(sampler.global_micro_batches(epoch)):
            for i in batch:
                where.setdefault(groups[i], set()).add(k)
        assert all(len(batches) == 1 for batches in where.values())
        stats = sampler.stats(epoch)
        assert stats["small_groups_split"] == 0 and stats["anchors_without_negative"] == 0


def test_every_anchor_meets_a_hard_negative():
    # even group sizes and an even micro-batch: possible for every anchor, large groups included
    groups = _groups([random.Random(i).choice([2, 4, 6, 10, 26]) for i in range(120)])
    for b in (2, 4, 8):
        sampler = _ranks(groups, b, 2)[0]
        for batch in sampler.global_micro_batches():
            counts = Counter(groups[i] for i in batch)
            assert all(counts[groups[i]] >= 2 for i in batch)
    # the reference release: pairs of rows, micro-batch 2
    pairs = [f"pair{k // 2}" for k in range(100)]
    for batch in _ranks(pairs, 2, 4)[1]:
        assert pairs[batch[0]] == pairs[batch[1]]


def test_large_groups_fill_several_micro_batches():
    groups = _groups([25] * 8 + [3] * 10)
    sampler = _ranks(groups, 8, 1)[0]
    stats = sampler.stats()
    assert stats["small_groups_split"] == 0 and stats["anchors_without_negative"] <= 2
    seen = Counter(i for batch in sampler.global_micro_batches() for i in batch)
    assert max(seen.values()) == 1


def test_deterministic_given_seed_and_epoch():
    groups = _groups([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5] * 5)
    a, b = _ranks(groups, 4, 2, seed=7)[1], _ranks(groups, 4, 2, seed=7)[1]
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    a.set_epoch(4)
    assert list(a) != list(b)
    assert list(_ranks(groups, 4, 2, seed=8)[1]) != list(_ranks(groups, 4, 2, seed=7)[1])


def test_resume_mid_epoch():
    groups = _groups([2, 3, 4, 5, 1, 6] * 10)
    full = _ranks(groups, 4, 2, seed=5)[1]
    full.set_epoch(2)
    expected = list(full)
    partial = _ranks(groups, 4, 2, seed=5)[1]
    partial.set_epoch(2)
    it = iter(partial)
    seen = [next(it) for _ in range(5)]
    state = partial.state_dict()
    assert state["epoch"] == 2 and state["position"] == 5
    fresh = _ranks(groups, 4, 2, seed=5)[1]
    fresh.load_state_dict(state)
    fresh.set_epoch(2)  # the trainer calls set_epoch again: same epoch, position kept
    assert seen + list(fresh) == expected
    assert fresh.state_dict()["position"] == len(fresh)  # epoch complete
    fresh.set_epoch(3)
    assert fresh.state_dict()["position"] == 0
    assert fresh.state_dict(consumed=2)["position"] == 2  # what a prefetching loader really consumed

    # another world size: the global plan is the same, consumed micro-batches are skipped
    two = _ranks(groups, 4, 2, seed=5)
    for s in two:
        s.set_epoch(2)
    plan = two[0].global_micro_batches()
    four = _ranks(groups, 4, 4, seed=5)
    for s in four:
        s.load_state_dict({**two[0].state_dict(consumed=4), "epoch": 2})
    assert four[0].position == 2
    assert [next(iter(s)) for s in four] == plan[8:12]

    with pytest.raises(ValueError, match="seed was 5 when saved but is 6"):
        _ranks(groups, 4, 2, seed=6)[0].load_state_dict(state)


def test_drop_last_false_pads_with_repeats():
    groups = _groups([3, 3, 1, 2])  # 9 examples: 2 full micro-batches of 4 and one of 1
    samplers = _ranks(groups, 4, 2, drop_last=False)
    batches = [list(s) for s in samplers]
    assert [len(x) for x in batches] == [2, 2] and all(len(batch) == 4 for x in batches for batch in x)
    assert samplers[0].stats()["examples_repeated"] == 3 + 4  # the last one completed, then one repeated whole
    assert {i for x in batches for batch in x for i in batch} == set(range(9))
    assert len(GroupedBatchSampler(["a"] * 3, 4, 1, 0, 0, drop_last=True)) == 0


def test_bad_arguments():
    for kwargs in ({"micro_batch_size": 0, "world_size": 1, "rank": 0}, {"micro_batch_size": 2, "world_size": 2,
                                                                        "rank": 2}):
        with pytest.raises(ValueError):
            GroupedBatchSampler(["a", "b"], seed=0, **kwargs)


def test_paraphrase_choice_per_epoch():
    assert paraphrase_index(42, 0, 7, 1) == 0
    for row in range(50):
        n = 1 + row % 4
        used = [paraphrase_index(42, e, row, n) for e in range(n)]
        assert sorted(used) == list(range(n))  # every paraphrase once in n consecutive epochs
        assert paraphrase_index(42, 3, row, n) == paraphrase_index(42, 3, row, n)
    assert paraphrase_indices(1, 2, [3, 3, 3]) == [paraphrase_index(1, 2, i, 3) for i in range(3)]
    assert [paraphrase_index(1, 0, i, 5) for i in range(40)] != [paraphrase_index(2, 0, i, 5) for i in range(40)]
    with pytest.raises(ValueError):
        paraphrase_index(0, 0, 3, 0)


def _step_pools(per_rank, steps, ranks):
    """The pools of `step_pool=(steps, ranks)` rebuilt from what each rank iterates: pools[t][j] are
    the examples of step t on the ranks j*ranks .. j*ranks+ranks-1."""
    w = len(per_rank)
    return [[sorted(i for r in range(j * ranks, (j + 1) * ranks) for batch in per_rank[r][t * steps:(t + 1) * steps]
                    for i in batch)
             for j in range(w // ranks)]
            for t in range(len(per_rank[0]) // steps)]


def test_step_pools_deal_each_pool_to_one_step_and_its_ranks():
    rng = random.Random(99)
    for trial in range(60):
        groups = _groups([rng.choice([1, 2, 2, 3, 4, 6, 13]) for _ in range(rng.randint(1, 40))], trial)
        b, w, a = rng.choice([1, 2, 3]), rng.choice([1, 2, 4]), rng.choice([1, 2, 3])
        k = rng.choice([d for d in (1, 2, 4) if w % d == 0])
        samplers = [GroupedBatchSampler(groups, b, w, r, trial, step_pool=(a, k)) for r in range(w)]
        per_rank = [list(s) for s in samplers]
        n = len(samplers[0])
        assert n % a == 0 and all(len(x) == n for x in per_rank) and all(len(m) == b for x in per_rank for m in x)
        plan = samplers[0].global_micro_batches()
        assert [per_rank[r][s] for s in range(n) for r in range(w)] == plan  # entry s * W + r, as ever
        used = [i for x in per_rank for m in x for i in m]
        assert len(used) == len(set(used)) >= len(groups) - (w * a * b - 1)
        cap = a * k * b
        for pools in _step_pools(per_rank, a, k):
            assert all(len(p) == cap for p in pools)
        if samplers[0].stats()["small_groups_split"] == 0:  # every group of at most `cap` in one pool
            where = {}
            for t, pools in enumerate(_step_pools(per_rank, a, k)):
                for j, p in enumerate(pools):
                    for i in p:
                        where.setdefault(groups[i], set()).add((t, j))
            sizes = Counter(groups)
            assert all(len(places) == 1 for g, places in where.items() if sizes[g] <= cap), trial


def test_step_pools_keep_groups_larger_than_a_micro_batch_together():
    """Groups of 2 to 6 with micro-batches of 2: the micro-batch packing splits groups of 4 and 6
    over steps; with step_pool=(2, 2) (pools of 8) each group lands in one step's pool (but at
    most the one the last resort splits), every anchor with same-group negatives in it."""
    groups = _groups([random.Random(i).choice([2, 4, 4, 6]) for i in range(60)])
    sizes = Counter(groups)

    def split_groups(per_rank):
        where = {}
        for t, (pool,) in enumerate(_step_pools(per_rank, 2, 2)):
            for i in pool:
                where.setdefault(groups[i], set()).add(t)
        return sum(1 for g, steps in where.items() if len(steps) > 1 and sizes[g] <= 8)

    pooled = [GroupedBatchSampler(groups, 2, 2, r, 0, step_pool=(2, 2)) for r in range(2)]
    stats = pooled[0].stats()
    assert split_groups([list(s) for s in pooled]) <= stats["small_groups_split"] <= 1  # the epoch's last gap
    assert stats["anchors_without_negative"] == 0
    micro = [GroupedBatchSampler(groups, 2, 2, r, 0) for r in range(2)]
    per_rank = [list(s) for s in micro]
    per_rank = [x[:len(x) // 2 * 2] for x in per_rank]  # whole steps of 2 micro-batches
    assert split_groups(per_rank) > 20


def test_step_pools_resume_only_with_the_same_world_and_pools():
    groups = _groups([2, 3, 4, 5, 1, 6] * 10)
    full = GroupedBatchSampler(groups, 2, 2, 1, 5, step_pool=(2, 2))
    expected = list(full)
    partial = GroupedBatchSampler(groups, 2, 2, 1, 5, step_pool=(2, 2))
    it = iter(partial)
    seen = [next(it) for _ in range(4)]  # two whole steps
    state = partial.state_dict()
    fresh = GroupedBatchSampler(groups, 2, 2, 1, 5, step_pool=(2, 2))
    fresh.load_state_dict(state)
    assert seen + list(fresh) == expected
    for other, match in [(GroupedBatchSampler(groups, 2, 4, 1, 5, step_pool=(2, 2)), "world_size was 2"),
                         (GroupedBatchSampler(groups, 2, 2, 1, 5, step_pool=(4, 2)), r"step_pool was \(2, 2\)"),
                         (GroupedBatchSampler(groups, 2, 2, 1, 5), r"step_pool was \(2, 2\) when saved but is None")]:
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match="step_pool"):
        GroupedBatchSampler(groups, 2, 2, 0, 5, step_pool=(2, 3))
