"""Cross-rank negatives: all-gather pooled embeddings with an exact gradient.

Contract (pattern 1 of docs/DISTRIBUTED.md). Each rank computes the loss of ITS OWN anchors
against the GATHERED pool, its positives at `offset + arange(B)` (offset = rank-in-pool x B).
`gather` is differentiable: its backward sums, over the ranks of the pool, the gradients that
every rank's loss sends to each slice, and hands each rank the gradient of its own slice. With
DeepSpeed averaging parameter gradients over ranks, the result is exactly the gradient of the
mean over ranks of the per-rank losses, i.e. the loss of a single process holding the whole
global batch. So the loss is used at scale 1: do NOT multiply it by world size (that factor
belongs to the other pattern, a full global loss per rank).

`NegativePool(enabled=False)` (or world size 1) keeps the pool local: the reference behaviour.
`group_size=k` pools k consecutive ranks (large jobs); world size must be a multiple of k.
Every rank must construct the pool (it creates process groups) and call `gather` every step with
an equal-shaped tensor: collectives never depend on the data.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from coin.errors import CoinError


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group, group_rank: int, group_size: int) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(group_size)]
        dist.all_gather(parts, x, group=group)
        ctx.group, ctx.group_rank, ctx.rows = group, group_rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.group_rank * ctx.rows
        return grad[start:start + ctx.rows], None, None, None


def pool_ranks(enabled: bool, group_size: int, world: int) -> int:
    """How many ranks share one negative pool (coin.gather, coin.gather_group_size): 1 keeps it local."""
    if not enabled or world == 1:
        return 1
    size = group_size or world
    if size < 1 or world % size:
        raise CoinError(f"coin.gather_group_size: {group_size} does not divide the world size {world}")
    return size


class NegativePool:
    def __init__(self, enabled: bool = True, group_size: int = 0):
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        rank = dist.get_rank() if world > 1 else 0
        self.group = None
        self.size = 1
        self.rank_in_pool = 0
        size = pool_ranks(enabled, group_size, world)
        if size == 1:
            return
        if size < world:
            # every rank creates every group, in the same order (a torch.distributed rule)
            for start in range(0, world, size):
                group = dist.new_group(list(range(start, start + size)))
                if start <= rank < start + size:
                    self.group = group
        self.size = size
        self.rank_in_pool = rank % size

    def gather(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """x [B, d] -> (pool [size * B, d], offset of this rank's rows in the pool)."""
        if self.size == 1:
            return x, 0
        return _Gather.apply(x, self.group, self.rank_in_pool, self.size), self.rank_in_pool * x.shape[0]
