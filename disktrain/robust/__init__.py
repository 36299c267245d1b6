"""Byzantine-robust gradient aggregation: rules, simulated attacks and the grad-sync step."""

from disktrain.robust.aggregators import (
    AGGREGATORS,
    RobustConfig,
    aggregate,
    coordinate_median,
    flag_aggregate,
    geometric_median,
    krum,
    krum_scores,
    mean,
    multi_krum,
    trimmed_mean,
)
from disktrain.robust.attacks import ATTACKS, alie, craft, gaussian, ipm, sign_flip
from disktrain.robust.sync import RobustAggregate

__all__ = [
    "AGGREGATORS", "ATTACKS", "RobustAggregate", "RobustConfig", "aggregate", "alie",
    "coordinate_median", "craft", "flag_aggregate", "gaussian", "geometric_median", "ipm", "krum",
    "krum_scores", "mean", "multi_krum", "sign_flip", "trimmed_mean",
]
