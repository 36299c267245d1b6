"""Sampling in memory: a plan's batches as one set of ragged arrays, and the sample store's
in-memory twin (:class:`MemorySamples`) that the loader reads as it reads the store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from disktrain.errors import DataError
from disktrain.kernels.sampling import SampledBatch, SampledBatches, sample_batches
from disktrain.kernels.typed_sampling import TypedSampledBatches, sample_typed_batches
from disktrain.sample.link import LinkBatches, LinkLabels, LinkPlan
from disktrain.sample.plan import SampleConfig, SamplePlan, sampling_key
from disktrain.storage.dataset import Dataset, TypedDataset, new_id


def sample_plan_batches(dataset: Dataset, plan: SamplePlan,
                        batches: Sequence[int]) -> SampledBatches:
    """The plan's batches ``batches`` (ascending), sampled: each a pure function of (dataset,
    batch, config), whatever the batches it is sampled with."""
    parts = []
    for epoch in sorted({plan.batch_epoch(b) for b in batches}):
        order = plan.epoch_order(epoch)
        seeds = [plan.batch_seeds(b, order) for b in batches if plan.batch_epoch(b) == epoch]
        offsets = np.zeros(len(seeds) + 1, np.int64)
        np.cumsum([len(s) for s in seeds], out=offsets[1:])
        seeds, key = np.concatenate(seeds).astype(np.int64), sampling_key(plan.config.seed,
                                                                           epoch)
        if isinstance(dataset, TypedDataset):
            parts.append(_sample_typed(dataset, plan.config, seeds, offsets, key))
        else:
            parts.append(sample_batches(dataset.indptr, dataset.indices, seeds, offsets,
                                        np.asarray(plan.config.fanouts, np.int64), key))
    return parts[0] if len(parts) == 1 else _concat(parts)


def link_labels(plan, batches: Sequence[int]) -> LinkBatches | None:
    """The supervision pairs of the plan's edge batches ``batches`` (None: node batches)."""
    if not isinstance(plan, LinkPlan):
        return None
    return LinkBatches.of([plan.batch(b)[1] for b in batches])


def _sample_typed(dataset: TypedDataset, cfg: SampleConfig, seeds: np.ndarray,
                  offsets: np.ndarray, key: int) -> TypedSampledBatches:
    rels = dataset.relations
    csrs = [dataset.relation_csr(r) for r in rels]
    return sample_typed_batches(
        tuple(c[0] for c in csrs), tuple(c[1] for c in csrs),
        [dataset.type_index(r[0]) for r in rels], [dataset.type_index(r[2]) for r in rels],
        dataset.type_offsets, seeds, offsets, cfg.fanout_matrix(rels), key)


def _concat(parts: list):
    """Join the per-epoch kernel outputs of consecutive batches into one."""
    kind = type(parts[0])
    counts = "hop_counts" if kind is SampledBatches else "type_counts"
    out = {name: np.concatenate([getattr(p, name) for p in parts])
           for name in ("nodes", "edge_src", "edge_dst", counts)}
    for name in ("node_offsets", "edge_offsets"):
        sizes = np.concatenate([np.diff(getattr(p, name)) for p in parts])
        out[name] = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=out[name][1:])
    return kind(**out)


def featured_types(dataset: Dataset) -> list[int] | None:
    """The node types (indices) of a typed dataset whose rows its batches read (None for one
    type)."""
    if not isinstance(dataset, TypedDataset):
        return None
    return [i for i, t in enumerate(dataset.types) if t.feature_dim]


def typed_input_nodes(batch, featured: Sequence[int]) -> np.ndarray:
    """The global ids of the rows a typed batch reads: its featured types' nodes, type after
    type, each in its positions' order."""
    return np.concatenate([batch.type_nodes(t) for t in featured]) if featured else \
        np.zeros(0, np.int64)


class MemorySamples:
    """The batches of a sample store held in memory (a
    :class:`~disktrain.sample.store.SampleSource`): ``batches`` of ``config``'s plan, batch
    ``b`` of epoch ``config.first_epoch + b // batches_per_epoch``."""

    def __init__(self, batches: SampledBatches | TypedSampledBatches, config: SampleConfig,
                 batches_per_epoch: int, featured_types: list[int] | None = None,
                 links: LinkBatches | None = None):
        self.batches, self.config, self.links = batches, config, links
        self.num_batches, self.batches_per_epoch = batches.num_batches, batches_per_epoch
        self.featured_types = featured_types
        """A typed graph's node types (indices) whose rows the batches read; None: one type."""
        self.store_id = new_id()

    @classmethod
    def sample(cls, dataset: Dataset, config: SampleConfig) -> MemorySamples:
        """The batches :func:`~disktrain.sample.store.sample_dataset` stores for ``config``,
        sampled in memory."""
        plan = SamplePlan.of(dataset, config)
        if plan.num_batches == 0:
            raise DataError(f"{dataset.path}: the {config.split} split is empty; nothing to sample")
        every = range(plan.num_batches)
        return cls(sample_plan_batches(dataset, plan, every), config, plan.batches_per_epoch,
                   featured_types(dataset), link_labels(plan, every))

    def batch(self, b: int) -> SampledBatch:
        return self.batches.batch(b)

    def input_nodes(self, b: int) -> np.ndarray:
        if self.featured_types is not None:
            return typed_input_nodes(self.batch(b), self.featured_types)
        return self.batch(b).input_nodes

    def link_labels(self, b: int) -> LinkLabels | None:
        """Edge batch ``b``'s supervision pairs (None: node batches)."""
        return None if self.links is None else self.links.batch(b)

    def inner_count(self, b: int) -> int:
        """Input nodes of batch ``b`` that later layers also read (the last hop's come after;
        a typed batch's rows all count as inner)."""
        if self.featured_types is not None:
            return len(self.input_nodes(b))
        hops = self.batches.hop_counts[b]
        return int(hops[len(hops) - 2])
