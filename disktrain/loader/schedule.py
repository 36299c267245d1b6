"""Who trains on which batch, when: pure functions, tested against tables."""

from __future__ import annotations

import numpy as np


def epoch_batches(epoch: int, seed: int, sampled_epochs: int, batches_per_epoch: int,
                  plan_reuse: str) -> np.ndarray:
    """Global batch ids trained in ``epoch``, in a seeded shuffled order.

    cycle: the batches of pre-sampled epoch ``epoch % sampled_epochs``; pool:
    ``batches_per_epoch`` batches drawn without replacement from every pre-sampled batch;
    fresh: pre-sampled epoch ``epoch`` while there is one, else the batches of the epoch's own
    fresh store (ids from 0), in the order cycle would train them.
    """
    rng = np.random.default_rng([seed, 1_000_003, epoch])
    if plan_reuse == "fresh":
        first = epoch * batches_per_epoch if epoch < sampled_epochs else 0
        return first + rng.permutation(batches_per_epoch)
    if plan_reuse == "cycle":
        first = (epoch % sampled_epochs) * batches_per_epoch
        return first + rng.permutation(batches_per_epoch)
    if plan_reuse == "pool":
        return rng.permutation(sampled_epochs * batches_per_epoch)[:batches_per_epoch]
    raise ValueError(f"plan_reuse must be 'fresh', 'cycle' or 'pool', got {plan_reuse!r}")


def worker_share(batch_ids: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s disjoint share: every ``world_size``-th batch, equal counts.

    The ``len % world_size`` last batches are dropped so every worker takes the same number
    of optimizer steps (a collective per step must not hang on a worker with one more).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    usable = len(batch_ids) - len(batch_ids) % world_size
    return batch_ids[rank:usable:world_size]
