"""This rank's micro-batches: the token cache, the grouped sampler, the paraphrase of the epoch.

    train, held_out = build_data(cfg, tokenizer, world_size, rank)
    batch = train.next_batch()      # a training/batch.py micro-batch of B examples (2B rows)
    train.epoch, train.state_dict() / load_state_dict()     # exact mid-epoch resume

The pieces come from coin.data_tools (one implementation each, shared with `coin data`):
`build_token_cache` tokenises the contrastive records once (original and every paraphrase, in
the one prompt format), `GroupedBatchSampler` deals micro-batches that keep same-instruction
hard negatives together and gives every rank the same number of equal-size micro-batches, and
the per-epoch paraphrase choice picks, deterministically from (seed, epoch, example), which
paraphrase is the positive of each example in that epoch.

The stream crosses epochs by itself (`max_steps` may ask for more than `epochs`); its position is
(epoch, micro-batches drawn in the epoch), saved in every checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from coin.errors import CoinError

from . import dist
from .batch import collate
from .config import RunConfig


def _cache_dir(cfg: RunConfig) -> str:
    return cfg.data.cache_dir or os.path.join(cfg.output.dir, "token_cache")


def load_token_cache(cfg: RunConfig, path: str, tokenizer):
    """The token cache of `path`; rank 0 builds it, the other ranks then read what it wrote."""
    from coin.data_tools.prompt import PromptFormat
    from coin.data_tools.token_cache import build_token_cache

    fmt = PromptFormat.from_data_config(cfg.data)

    def build():
        return build_token_cache(path, tokenizer, fmt, cfg.data.max_length, _cache_dir(cfg),
                                 min_prompt_tokens=cfg.data.min_prompt_tokens,
                                 max_dropped_share=cfg.data.max_dropped_share, show_progress=dist.rank() == 0)

    return dist.main_first(build)


class _Split:
    """Shared by the train stream and the held-out set: rows -> collated micro-batches."""

    def __init__(self, dataset, sampler, pad_id: int, seed: int):
        self.dataset = dataset
        self.sampler = sampler
        self.pad_id = pad_id
        self.seed = seed
        self._n_para = [len(p) for p in dataset["para_prompt_len"]]

    def collate(self, indices: list[int], epoch: int) -> dict:
        from coin.data_tools.sampler import paraphrase_index

        cols = self.dataset[list(indices)]
        rows = []
        for j, i in enumerate(indices):
            k = paraphrase_index(self.seed, epoch, i, self._n_para[i])
            rows.append({
                "id": cols["id"][j],
                "input_ids": cols["input_ids"][j],
                "prompt_len": cols["prompt_len"][j],
                "para_input_ids": cols["para_input_ids"][j][k],
                "para_prompt_len": cols["para_prompt_len"][j][k],
            })
        return collate(rows, self.pad_id)


class TrainStream(_Split):
    """This rank's endless stream of training micro-batches, epoch after epoch.

    `position` counts the micro-batches handed to the trainer in the current epoch, so the saved
    state is exactly what was consumed, even when `data.num_workers` > 0 collates ahead in
    DataLoader worker processes.
    """

    def __init__(self, dataset, sampler, pad_id: int, seed: int, num_workers: int = 0):
        super().__init__(dataset, sampler, pad_id, seed)
        self.num_workers = num_workers
        self.position = 0
        self._iter: Iterator | None = None

    @property
    def micro_batches_per_epoch(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def next_batch(self) -> dict:
        if self.position >= len(self.sampler):  # the epoch is complete: the next one
            self.sampler.set_epoch(self.sampler.epoch + 1)
            self.position, self._iter = 0, None
        if self._iter is None:
            self._iter = self._batches_from(self.position)
        batch = next(self._iter)
        self.position += 1
        return batch

    def _batches_from(self, position: int) -> Iterator[dict]:
        epoch = self.sampler.epoch
        plan = self.sampler.micro_batches(epoch)[position:]
        if self.num_workers == 0:
            return (self.collate(indices, epoch) for indices in plan)
        from torch.utils.data import DataLoader

        return iter(DataLoader(_Collated(self, plan, epoch), batch_size=None, shuffle=False,
                               num_workers=self.num_workers))

    def state_dict(self) -> dict:
        return self.sampler.state_dict(consumed=self.position)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.position, self._iter = self.sampler.position, None


class _Collated:
    """The rest of an epoch as a map-style dataset of collated micro-batches (for DataLoader workers)."""

    def __init__(self, split: _Split, plan: list[list[int]], epoch: int):
        self.split, self.plan, self.epoch = split, plan, epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict:
        return self.split.collate(self.plan[i], self.epoch)


class HeldOut(_Split):
    """The held-out set: the same micro-batches (epoch 0 order and paraphrases) at every evaluation."""

    @property
    def micro_batches(self) -> int:
        return len(self.sampler)

    def batches(self) -> Iterator[dict]:
        for indices in self.sampler.micro_batches(0):
            yield self.collate(indices, 0)


def _sampler(dataset, cfg: RunConfig, world_size: int, rank: int, path: str, key: str, spread: bool = False):
    from coin.data_tools.sampler import GroupedBatchSampler

    from .gather import pool_ranks

    mbs = cfg.optim.micro_batch_size
    if len(dataset) < mbs * world_size:
        raise CoinError(
            f"{key}: {path} has {len(dataset)} examples, fewer than one global micro-batch "
            f"(optim.micro_batch_size={mbs} x {world_size} ranks = {mbs * world_size})"
        )
    step_pool = None
    if spread:  # data.spread_groups: groups packed into the step-wide pools of coin.pool: step
        step_pool = (cfg.optim.gradient_accumulation_steps,
                     pool_ranks(cfg.coin.gather, cfg.coin.gather_group_size, world_size))
    sampler = GroupedBatchSampler(dataset["group"], mbs, world_size, rank, cfg.optim.seed, drop_last=True,
                                  step_pool=step_pool)
    if len(sampler) == 0:
        what = f"micro-batch of {mbs} examples" if step_pool is None else \
            f"step of {step_pool[0]} micro-batches of {mbs} examples (data.spread_groups)"
        raise CoinError(f"{key}: {path} gives no complete {what} on each of {world_size} ranks")
    return sampler


def build_data(cfg: RunConfig, tokenizer, world_size: int, rank: int) -> tuple[TrainStream, HeldOut | None]:
    train_ds = load_token_cache(cfg, cfg.data.train, tokenizer)
    train = TrainStream(train_ds, _sampler(train_ds, cfg, world_size, rank, cfg.data.train, "data.train",
                                           spread=cfg.data.spread_groups),
                        tokenizer.pad_token_id, cfg.optim.seed, cfg.data.num_workers)
    held_out = None
    if cfg.data.eval:
        eval_ds = load_token_cache(cfg, cfg.data.eval, tokenizer)
        held_out = HeldOut(eval_ds, _sampler(eval_ds, cfg, world_size, rank, cfg.data.eval, "data.eval"),
                           tokenizer.pad_token_id, cfg.optim.seed)
    return train, held_out
