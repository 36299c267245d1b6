"""Attacks and real attacking workers, label flipping, and the replica digest (unit, then 4 gloo
ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import spawn_ranks

from disktrain.robust import (
    AttackConfig,
    ByzantineWorker,
    ReplicaDivergenceError,
    RobustAggregate,
    RobustConfig,
    aggregate,
    check_replicas,
    craft,
    flip_labels,
    inf,
    mean,
    mimic,
    nan,
    opt_alie,
    opt_ipm,
    replica_digest,
)
from disktrain.robust.attacks import alie, line_search
from disktrain.robust.digest import divergent_ranks
from disktrain.robust.grads import flat_grads

HONEST = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])


# --- attacks ----------------------------------------------------------------------------------

def test_new_attacks_by_hand():
    assert torch.equal(mimic(HONEST, 1), HONEST[1])
    assert torch.isnan(nan(HONEST)).all() and torch.isposinf(inf(HONEST)).all()
    assert nan(HONEST).shape == (2,)
    with pytest.raises(ValueError, match=r"index in \[0, 3\), got 3"):
        mimic(HONEST, 3)
    assert torch.equal(alie(HONEST, 7, 2, z=1.0), HONEST.mean(0) + HONEST.std(0, correction=0))


def test_line_search_follows_byzfl_expansion_then_contraction():
    seen = []

    def damage(x: float) -> float:
        seen.append(x)
        return -(x - 37.0) ** 2

    best = line_search(damage, evals=8)
    # expansion: 0, 10, 30 (delta doubled), 70 (worse: delta 40 * 0.8); contraction from 30
    assert seen == pytest.approx([0, 10, 30, 70, 62, 55.6, 50.48, 46.384])
    assert best == 30
    with pytest.raises(ValueError, match="ratio=0.3"):
        line_search(damage, ratio=0.3)


def test_optimized_attacks_beat_their_fixed_versions_against_the_mean():
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(6, 50, generator=g) + 1

    def damage(bad: torch.Tensor) -> float:
        return float((mean(torch.cat([honest, bad.expand(2, -1)])) - honest.mean(0)).norm())

    best_ipm = opt_ipm(honest, 2, mean)
    assert damage(best_ipm) > damage(craft("ipm", honest, n_total=8, f=2, eps=2.0))
    best_alie = opt_alie(honest, 2, mean, evals=10)
    assert damage(best_alie) > damage(craft("alie", honest, n_total=8, f=2))
    assert torch.equal(craft("opt-ipm", honest, n_total=8, f=2, aggregate=mean), best_ipm)


def test_craft_checks_its_parameters():
    with pytest.raises(ValueError, match="takes no parameter std; its parameters: eps"):
        craft("ipm", HONEST, n_total=5, f=1, std=1.0)
    with pytest.raises(ValueError, match="needs the defender's aggregate"):
        craft("opt-alie", HONEST, n_total=5, f=1)
    with pytest.raises(ValueError, match="takes no parameter eps"):
        AttackConfig(attack="alie", ranks=(1,), params={"eps": 1.0})


# --- label flipping and the worker's configuration ------------------------------------------

def test_flip_labels():
    y = torch.tensor([0, 1, 2, 3, -1, 4])
    assert flip_labels(y, 4).tolist() == [3, 2, 1, 0, -1, 4]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"attack": "boom", "ranks": (0,)}, "'boom' is unknown"),
    ({"attack": "ipm", "ranks": ()}, "at least one"),
    ({"attack": "ipm", "ranks": (1, 1)}, r"distinct.*\[1, 1\]"),
    ({"attack": "ipm", "ranks": (-1,)}, "distinct"),
    ({"attack": "ipm", "ranks": (0,), "params": {"z": 1.0}}, "takes no parameter z"),
    ({"attack": "label-flip", "ranks": (0,), "params": {"eps": 1.0}}, "parameters: none"),
    ({"attack": "ipm", "ranks": (0,), "seed": -1}, "seed must be >= 0"),
])
def test_attack_config_names_the_bad_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackConfig(**kwargs)


def test_worker_checks_the_world_and_flips_only_on_attacking_ranks():
    cfg = AttackConfig(attack="label-flip", ranks=(1, 2))
    robust = RobustConfig(aggregator="median", f=2)
    with pytest.raises(ValueError, match=r"ranks \[1, 2\] need world size > 2.*got 2"):
        ByzantineWorker(cfg, robust, rank=0, world_size=2, num_classes=3)
    with pytest.raises(ValueError, match="num_classes >= 2, got None"):
        ByzantineWorker(cfg, robust, rank=0, world_size=5)
    y = torch.tensor([0, 2])
    assert ByzantineWorker(cfg, robust, rank=1, world_size=5, num_classes=3).labels(y).tolist() \
        == [2, 0]
    assert ByzantineWorker(cfg, robust, rank=0, world_size=5, num_classes=3).labels(y) is y


def test_local_attacks_need_no_process_group():
    lin = torch.nn.Linear(3, 2)
    lin(torch.ones(1, 3)).sum().backward()
    params = list(lin.parameters())
    honest = ByzantineWorker(AttackConfig(attack="nan", ranks=(1,)), RobustConfig(),
                             rank=0, world_size=3)
    honest(params)
    assert torch.isfinite(flat_grads(params)).all()
    ByzantineWorker(AttackConfig(attack="nan", ranks=(1,)), RobustConfig(),
                    rank=1, world_size=3)(params)
    assert torch.isnan(flat_grads(params)).all()


# --- the digest -------------------------------------------------------------------------------

def test_digest_is_exact_and_sees_swaps():
    a = [torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.arange(7.0)]
    d = replica_digest(a)
    assert d.dtype == torch.int64 and d.shape == (4,)
    assert torch.equal(replica_digest([t.clone() for t in a]), d)
    swapped = a[1].clone()
    swapped[[2, 5]] = swapped[[5, 2]]
    assert not torch.equal(replica_digest([a[0], swapped]), d)
    nudged = a[0].clone()
    nudged[3, 1] = torch.nextafter(nudged[3, 1], torch.tensor(9.0))
    assert not torch.equal(replica_digest([nudged, a[1]]), d)
    assert replica_digest([torch.ones(3, dtype=torch.uint8)]).shape == (2,)  # odd byte count


def test_divergent_ranks_table():
    same, other = torch.tensor([1, 2]), torch.tensor([1, 3])
    assert divergent_ranks(torch.stack([same, same, other, same])) == ([0, 1, 3], [2])
    assert divergent_ranks(torch.stack([other, same])) == ([0], [1])  # tie: lowest rank wins
    assert divergent_ranks(torch.stack([same, same])) == ([0, 1], [])


def test_check_replicas_is_a_noop_alone():
    check_replicas([torch.ones(3)])


# --- 4 gloo ranks -----------------------------------------------------------------------------

WORLD = 4
ROBUST = RobustConfig(aggregator="trimmed-mean", f=1)
SCENARIOS = [
    AttackConfig(attack="sign-flip", ranks=(1,)),
    AttackConfig(attack="alie", ranks=(1, 3)),
    AttackConfig(attack="ipm", ranks=(0,), params={"eps": 2.0}),
    AttackConfig(attack="gaussian", ranks=(2,), params={"std": 3.0}, seed=4),
    AttackConfig(attack="nan", ranks=(3,)),
    AttackConfig(attack="mimic", ranks=(0,), params={"index": 1}),
    AttackConfig(attack="opt-ipm", ranks=(2,), params={"evals": 6}),
    AttackConfig(attack="label-flip", ranks=(2,)),
]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(8.0).view(2, 4) * (rank + 1) - rank, torch.tensor([rank % 3, 2])


def true_grads(rank: int, flip: bool = False) -> torch.Tensor:
    model = tiny_model()
    x, y = batch(rank)
    F.cross_entropy(model(x), flip_labels(y, 3) if flip else y).backward()
    return flat_grads(list(model.parameters()))


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        sent, synced = [], []
        for cfg in SCENARIOS:
            attacker = ByzantineWorker(cfg, ROBUST, rank=rank, world_size=WORLD, num_classes=3)
            model = tiny_model()
            params = list(model.parameters())
            x, y = batch(rank)
            F.cross_entropy(model(x), attacker.labels(y)).backward()
            attacker(params)
            sent.append(flat_grads(params))
            RobustAggregate(ROBUST)(params)
            synced.append(flat_grads(params))
        model = tiny_model()
        check_replicas(model.parameters(), "epoch 0")  # equal replicas pass
        if rank == 2:
            with torch.no_grad():
                model.bias[1] += 1e-3
        try:
            check_replicas(model.parameters(), "epoch 1")
            diverged = ""
        except ReplicaDivergenceError as e:
            diverged = str(e)
        torch.save({"sent": sent, "synced": synced, "diverged": diverged}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("workers")
    spawn_ranks(_worker, WORLD, str(out), timeout=120)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def expected_stack(cfg: AttackConfig) -> torch.Tensor:
    """What every rank sends under cfg, computed in this process."""
    flip = cfg.attack == "label-flip"
    stack = torch.stack([true_grads(r, flip and r in cfg.ranks) for r in range(WORLD)])
    if flip:
        return stack
    honest = [r for r in range(WORLD) if r not in cfg.ranks]
    bad = craft(cfg.attack, stack[honest], n_total=WORLD, f=len(cfg.ranks),
                generator=torch.Generator().manual_seed(cfg.seed << 32),
                aggregate=lambda x: aggregate(x, ROBUST), **cfg.params)
    stack[list(cfg.ranks)] = bad
    return stack


@pytest.mark.dist
@pytest.mark.parametrize("i", range(len(SCENARIOS)), ids=[c.attack for c in SCENARIOS])
@pytest.mark.slow
def test_attacking_ranks_send_the_attack_and_all_aggregate_it(ranks, i):
    cfg = SCENARIOS[i]
    want = expected_stack(cfg)
    for r in range(WORLD):
        got = ranks[r]["sent"][i]
        assert torch.allclose(got, want[r], rtol=1e-5, atol=1e-6, equal_nan=True), (cfg, r)
        assert torch.isfinite(got).all() == (cfg.attack != "nan" or r not in cfg.ranks)
    synced = [ranks[r]["synced"][i] for r in range(WORLD)]
    assert all(torch.equal(s, synced[0]) for s in synced[1:]), cfg  # identical replicas
    assert torch.isfinite(synced[0]).all(), cfg  # trimmed mean, f = 1: one NaN row dropped
    assert torch.allclose(synced[0], aggregate(want, ROBUST), rtol=1e-5, atol=1e-6), cfg


@pytest.mark.dist
@pytest.mark.slow
def test_every_rank_names_the_diverged_replica(ranks):
    for r in range(WORLD):
        msg = ranks[r]["diverged"]
        assert msg.startswith("epoch 1: parameter replicas diverged: rank(s) 2 differ from "
                              "rank(s) 0, 1, 3"), (r, msg)
