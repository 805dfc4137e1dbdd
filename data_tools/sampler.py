"""The instruction-grouped batch sampler of the trainer, and the per-epoch paraphrase choice.

    sampler = GroupedBatchSampler(groups, micro_batch_size=B, world_size=W, rank=r, seed=42)
    sampler.set_epoch(epoch)
    for indices in sampler: ...          # this rank's micro-batches: lists of B dataset indices

Contract (every rank computes the same plan from (groups, B, W, seed, epoch) alone):

- The global batch at step s is the concatenation over ranks of their s-th micro-batch.
- Every micro-batch holds exactly B indices; every rank gets `len(sampler)` micro-batches.
- Whole groups are shuffled together: a group of at most B examples lands in one micro-batch,
  so each anchor of a group of two or more meets at least one same-group (hard) negative.
- A group larger than B (members shuffled) fills micro-batches in several takes of at most B
  members, each take chosen so that neither one member stays behind nor a gap of one is left
  whenever some take allows it: every anchor still meets a same-group negative.
- Packing: groups are taken in a shuffled order; a micro-batch with g free slots takes the
  first group of at most B that fits cleanly (exactly g, at most g-2, or g-1 when a group of
  one remains; preferring an even gap afterwards, so odd-sized groups pair up). If none does,
  it takes a clean take from a group larger than B (those wait for the gaps small groups cannot
  fill), then any take from one, then the first group that fits at all, and only when
  every remaining piece is larger than the gap does it split a group of at most B members (a
  rare last resort, e.g. groups of three with B=4; `stats()['small_groups_split']` counts it).
- Remainder: with `drop_last=True` (default) the last incomplete micro-batch is left out, and so
  are the last micro-batches that do not make a full step across ranks (at most B-1 + (W-1)*B
  examples per epoch, different ones each epoch since the order is reshuffled). With
  `drop_last=False` the last micro-batch is completed with the first examples of the epoch and
  the rank remainder with whole repeated micro-batches (as DistributedSampler pads).
- Step-wide pools (`step_pool=(A, k)`, for `coin.pool: step`): the packing unit is the pool of
  one optimiser step, the A micro-batches of k consecutive ranks (A x k x B examples), instead
  of one micro-batch. Everything above holds with "micro-batch" read as "pool" (a group of at
  most A x k x B members stays in one pool, spread over its micro-batches; the remainder left
  out is at most one step's global batch less one example); each pool is then dealt out as the
  A micro-batches of its k ranks in one step: rank r's micro-batches of step t come from pool
  t x (W / k) + r // k. W must be a multiple of k; `len(sampler)` is a multiple of A, so steps
  never straddle an epoch. The plan then depends on W: a state saved with another world size
  (or other pools) is refused.
- Deterministic given (seed, epoch); `set_epoch(e)` selects the epoch.
- Resume: `state_dict()` = {epoch, position, ...} where position is the number of micro-batches
  this rank has consumed in the epoch (position == len(sampler) means the epoch is complete);
  `load_state_dict(state)` continues from there. The micro-batch plan does not depend on the
  world size, so a state saved with W ranks can be loaded with W' ranks: the W*position global
  micro-batches already consumed are skipped (rounded down to whole steps of the new size).
  A DataLoader with workers prefetches ahead of training: pass `consumed=` to `state_dict`.

`paraphrase_index(seed, epoch, row, n)` picks the paraphrase row `row` uses in `epoch`:
(offset(seed, row) + epoch) mod n, so every paraphrase is used once in n consecutive epochs.
"""
from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterator, Sequence


def _seed(*parts) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def paraphrase_index(seed: int, epoch: int, row: int, num_paraphrases: int) -> int:
    """The paraphrase (0..n-1) dataset row `row` uses in `epoch`; deterministic from `seed`."""
    if num_paraphrases < 1:
        raise ValueError(f"row {row}: needs at least one paraphrase, has {num_paraphrases}")
    return (_seed("paraphrase", seed, row) + epoch) % num_paraphrases


def paraphrase_indices(seed: int, epoch: int, counts: Sequence[int]) -> list[int]:
    """`paraphrase_index` for rows 0..len(counts)-1 with counts[i] paraphrases each."""
    return [paraphrase_index(seed, epoch, i, n) for i, n in enumerate(counts)]


def take_count(remaining: int, gap: int) -> int | None:
    """How many members a group larger than B gives to a gap: the most that leaves neither one
    member behind nor a gap of one; None when no such number exists."""
    for t in range(min(remaining, gap), 1, -1):
        if remaining - t != 1 and gap - t != 1:
            return t
    return None


class _Units:
    """Groups waiting to be packed, bucketed by (size key, flexible), first-in first-out by their
    shuffled order. A flexible unit (a group larger than B) gives members in several takes; its
    key caps its size at B + 2, beyond which every take looks the same."""

    def __init__(self, micro_batch_size: int):
        self.cap = micro_batch_size + 2
        self.buckets: dict[tuple[int, bool], deque] = {}
        self.count = 0

    def push(self, order: int, members: list[int], flexible: bool) -> None:
        key = (min(len(members), self.cap) if flexible else len(members), flexible)
        self.buckets.setdefault(key, deque()).append((order, members))
        self.count += 1

    def rigid_count(self, size: int) -> int:
        return len(self.buckets.get((size, False), ()))

    def first(self, accept) -> tuple[int, bool] | None:
        """The key whose head comes first in shuffled order among keys with accept(size, flexible)."""
        best, best_order = None, None
        for key, queue in self.buckets.items():
            if queue and (best_order is None or queue[0][0] < best_order) and accept(*key):
                best, best_order = key, queue[0][0]
        return best

    def pop(self, key: tuple[int, bool]) -> tuple[int, list[int]]:
        self.count -= 1
        return self.buckets[key].popleft()


class GroupedBatchSampler:
    """See the module docstring for the full contract."""

    def __init__(self, groups: Sequence[str], micro_batch_size: int, world_size: int, rank: int, seed: int,
                 drop_last: bool = True, step_pool: tuple[int, int] | None = None):
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size: expected an integer >= 1, got {micro_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world_size {world_size}: expected 0 <= rank < world_size")
        if step_pool is not None:
            steps, ranks = step_pool
            if steps < 1 or ranks < 1 or world_size % ranks:
                raise ValueError(f"step_pool {step_pool}: expected (accumulation steps >= 1, ranks per pool "
                                 f"dividing the world size {world_size})")
            step_pool = (int(steps), int(ranks))
        self.step_pool = step_pool
        self.micro_batch_size, self.world_size, self.rank = micro_batch_size, world_size, rank
        self.seed, self.drop_last = seed, drop_last
        self.num_examples = len(groups)
        index: dict[str, int] = {}
        self._groups: list[list[int]] = []
        for i, g in enumerate(groups):
            if g not in index:
                index[g] = len(self._groups)
                self._groups.append([])
            self._groups[index[g]].append(i)
        self.epoch = 0
        self.position = 0
        self._plan: tuple[int, list[list[int]], dict] | None = None

    # ------------------------------------------------------------------ sizes

    def _unit(self) -> tuple[int, int, int]:
        """(examples per packing unit, units per step, micro-batches per rank per step)."""
        steps, ranks = self.step_pool or (1, 1)
        return self.micro_batch_size * steps * ranks, self.world_size // ranks, steps

    def __len__(self) -> int:
        """Micro-batches per rank per epoch (the same on every rank and in every epoch)."""
        size, per_step, steps = self._unit()
        n = self.num_examples
        if self.drop_last:
            return (n // size) // per_step * steps
        return -(-(-(-n // size)) // per_step) * steps

    # ------------------------------------------------------------------ the plan

    def global_micro_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every micro-batch of the epoch in step order: step s, rank r is entry s * W + r."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan[0] != epoch:
            batches, stats = self._build(epoch)
            self._plan = (epoch, batches, stats)
        return self._plan[1]

    def stats(self, epoch: int | None = None) -> dict:
        """Counts of the epoch's plan: micro_batches, examples_used, examples_dropped,
        examples_repeated, small_groups_split, anchors_without_negative."""
        self.global_micro_batches(epoch)
        return dict(self._plan[2])

    def _build(self, epoch: int) -> tuple[list[list[int]], dict]:
        # packing units of b examples: micro-batches, or the pools of step_pool (w of them a step)
        b, w, _ = self._unit()
        rng = random.Random(_seed("grouped-batch-sampler", self.seed, epoch))
        units: list[tuple[list[int], bool]] = []
        for members in self._groups:
            members = members[:]
            rng.shuffle(members)
            units.append((members, len(members) > b))
        rng.shuffle(units)
        pool = _Units(b)
        for order, (members, flexible) in enumerate(units):
            pool.push(order, members, flexible)

        group_of = {}
        for g, members in enumerate(self._groups):
            for i in members:
                group_of[i] = g
        small_split: set[int] = set()
        batches: list[list[int]] = []
        current: list[int] = []
        while pool.count:
            gap = b - len(current)
            singles = pool.rigid_count(1)

            def clean(size, flexible, gap=gap, singles=singles):
                """Can go into the gap leaving nobody alone (a gap of one needs a group of one)."""
                if flexible:
                    return take_count(size, gap) is not None
                return size <= gap and (gap - size != 1 or singles - (size == 1) >= 1)

            # 1. a small group that fits cleanly, preferring an even gap afterwards (odd groups
            #    then pair up); large groups wait, to fill the gaps small groups cannot
            key = pool.first(lambda size, flexible, gap=gap: not flexible and clean(size, flexible)
                             and (gap - size) % 2 == 0)
            if key is None:
                key = pool.first(lambda size, flexible: not flexible and clean(size, flexible))
            if key is None:
                key = pool.first(clean)
            # 2. slots from a large group (split anyway), 3. any group that fits, 4. split a small group
            if key is None:
                key = pool.first(lambda size, flexible: flexible)
            if key is None:
                key = pool.first(lambda size, flexible, gap=gap: size <= gap)
            if key is None:
                key = pool.first(lambda size, flexible: True)
            order, members = pool.pop(key)
            flexible = key[1]
            take = len(members)
            if flexible:
                take = take_count(len(members), gap) or min(len(members), gap)
            elif take > gap:
                small_split.add(group_of[members[0]])
                take = gap
            current += members[:take]
            if len(members) > take:
                pool.push(order, members[take:], flexible)
            if len(current) == b:
                batches.append(current)
                current = []

        dropped = repeated = 0
        if current:
            if self.drop_last:
                dropped += len(current)
            else:
                fill = [i for batch in batches for i in batch if i not in current][: b - len(current)]
                while len(current) + len(fill) < b:  # fewer examples than one micro-batch
                    fill.append(current[len(fill) % len(current)])
                repeated += len(fill)
                batches.append(current + fill)
        rng.shuffle(batches)
        if self.drop_last:
            cut = len(batches) - len(batches) % w
            dropped += sum(len(x) for x in batches[cut:])
            batches = batches[:cut]
        elif batches and len(batches) % w:
            extra = w - len(batches) % w
            pad = [batches[i % len(batches)][:] for i in range(extra)]
            repeated += sum(len(x) for x in pad)
            batches += pad
        lonely = 0
        for batch in batches:
            seen: dict[int, int] = {}
            for i in batch:
                seen[group_of[i]] = seen.get(group_of[i], 0) + 1
            lonely += sum(1 for i in batch if seen[group_of[i]] == 1 and len(self._groups[group_of[i]]) > 1)
        if self.step_pool is not None:
            batches = self._deal(batches, w)
        stats = {"epoch": epoch, "micro_batches": len(batches), "examples_used": sum(len(x) for x in batches) - repeated,
                 "examples_dropped": dropped, "examples_repeated": repeated, "small_groups_split": len(small_split),
                 "anchors_without_negative": lonely}
        return batches, stats

    def _deal(self, pools: list[list[int]], per_step: int) -> list[list[int]]:
        """Pools in step order -> micro-batches in plan order (step t, micro-step m, rank r at
        (t A + m) W + r), rank r's from pool t (W / k) + r // k."""
        b, w = self.micro_batch_size, self.world_size
        steps, ranks = self.step_pool
        plan = []
        for t in range(len(pools) // per_step):
            for m in range(steps):
                for r in range(w):
                    q = m * ranks + r % ranks
                    plan.append(pools[t * per_step + r // ranks][q * b:(q + 1) * b])
        return plan

    # ------------------------------------------------------------------ iteration and resume

    def micro_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's micro-batches of the epoch, in order."""
        return self.global_micro_batches(epoch)[self.rank::self.world_size][: len(self)]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a new epoch starts at position 0."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.micro_batches()
        if self.position >= len(mine):  # a complete epoch iterated again restarts it
            self.position = 0
        while self.position < len(mine):
            batch = mine[self.position]
            self.position += 1
            yield list(batch)

    def state_dict(self, consumed: int | None = None) -> dict:
        """Resume state; `consumed` overrides the position (micro-batches trained on this epoch)."""
        return {"epoch": self.epoch, "position": self.position if consumed is None else int(consumed),
                "seed": self.seed, "num_examples": self.num_examples, "micro_batch_size": self.micro_batch_size,
                "world_size": self.world_size, "drop_last": self.drop_last,
                "step_pool": list(self.step_pool) if self.step_pool else None}

    def load_state_dict(self, state: dict) -> None:
        saved = dict(state, step_pool=tuple(state["step_pool"]) if state.get("step_pool") else None)
        keys = ("seed", "num_examples", "micro_batch_size", "drop_last", "step_pool")
        if self.step_pool is not None or saved["step_pool"] is not None:
            keys += ("world_size",)  # a plan of step-wide pools depends on the world size
        for key in keys:
            if key in state and saved[key] != getattr(self, key):
                raise ValueError(f"sampler state: {key} was {saved[key]!r} when saved but is {getattr(self, key)!r} "
                                 f"now: the data order cannot be resumed")
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        saved_world = int(state.get("world_size", self.world_size))
        if saved_world != self.world_size:
            position = position * saved_world // self.world_size
        self.position = min(position, len(self))
