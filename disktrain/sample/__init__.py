"""Offline sampling: the plan of mini-batches for every epoch and the on-disk sample store."""

from disktrain.sample.plan import SampleConfig, SamplePlan
from disktrain.sample.store import SampleStore, sample_dataset

__all__ = ["SampleConfig", "SamplePlan", "SampleStore", "sample_dataset"]
