"""Byzantine-robust aggregation: rules and pre-aggregators, attacks run by real attacking
workers, the grad-sync step, replica digests.

Modules: stack (shared checks, non-finite rows), select (order statistics), rules, flag,
preagg, config (RobustConfig, registries, aggregate), attacks, sync (RobustAggregate), worker
(ByzantineWorker, label flipping), momentum (WorkerMomentum: workers send the average of
their gradients), digest (replica consistency).
"""

from disktrain.robust.attacks import (
    ATTACKS,
    OMNISCIENT,
    alie,
    craft,
    gaussian,
    inf,
    ipm,
    mimic,
    nan,
    opt_alie,
    opt_ipm,
    sign_flip,
)
from disktrain.robust.config import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    Aggregator,
    RobustConfig,
    aggregate,
)
from disktrain.robust.digest import ReplicaDivergenceError, check_replicas, replica_digest
from disktrain.robust.flag import default_subspace, flag_aggregate, flag_basis
from disktrain.robust.momentum import WorkerMomentum
from disktrain.robust.preagg import bucketing, clip, nnm
from disktrain.robust.rules import (
    bulyan,
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    krum_scores,
    meamed,
    mean,
    multi_krum,
    trimmed_mean,
)
from disktrain.robust.sync import RobustAggregate
from disktrain.robust.worker import (
    LABEL_FLIP,
    WORKER_ATTACKS,
    AttackConfig,
    ByzantineWorker,
    flip_labels,
)

__all__ = [
    "AGGREGATORS", "ATTACKS", "LABEL_FLIP", "OMNISCIENT", "PRE_AGGREGATORS", "WORKER_ATTACKS",
    "Aggregator", "AttackConfig", "ByzantineWorker", "ReplicaDivergenceError", "RobustAggregate",
    "RobustConfig", "WorkerMomentum", "aggregate", "alie", "bucketing", "bulyan",
    "centered_clipping", "check_replicas", "clip", "coordinate_median", "craft", "default_subspace",
    "flag_aggregate", "flag_basis", "flip_labels", "gaussian", "geometric_median", "inf", "ipm",
    "krum", "krum_scores", "meamed", "mean", "mimic", "multi_krum", "nan", "nnm", "opt_alie",
    "opt_ipm", "replica_digest", "sign_flip", "trimmed_mean",
]
