"""What every plan of batches shares: ``num_items`` items per epoch (seed nodes, training
edges) cut into batches of ``config.batch_size``, batches grouped into units of work of
``config.group_size``, batch ``b`` of the plan in epoch ``first_epoch + b //
batches_per_epoch`` of the run."""

from __future__ import annotations


class Batching:
    """The arithmetic of a plan's batches (its ``config`` a SampleConfig; ``num_items`` its
    own)."""

    config: object
    num_items: int

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.num_items // self.config.batch_size)

    @property
    def num_batches(self) -> int:
        return self.batches_per_epoch * self.config.epochs

    @property
    def num_groups(self) -> int:
        return -(-self.num_batches // self.config.group_size)

    def group_batches(self, group: int) -> range:
        """Global batch indices in ``group``."""
        g = self.config.group_size
        return range(group * g, min((group + 1) * g, self.num_batches))

    def batch_epoch(self, batch: int) -> int:
        """The run epoch of the plan's batch ``batch``."""
        return self.config.first_epoch + batch // self.batches_per_epoch
