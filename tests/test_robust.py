"""Byzantine-robust aggregation: hand-computed rules, attacks, robustness, the gloo sync step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from helpers import spawn_ranks

from disktrain.robust import (
    AGGREGATORS,
    AttackConfig,
    ByzantineWorker,
    RobustAggregate,
    RobustConfig,
    aggregate,
    alie,
    bulyan,
    centered_clipping,
    coordinate_median,
    craft,
    flag_aggregate,
    gaussian,
    geometric_median,
    ipm,
    krum,
    krum_scores,
    meamed,
    mean,
    multi_krum,
    sign_flip,
    trimmed_mean,
)
from disktrain.robust.attacks import alie_z

X5 = torch.tensor([[1.0, 10.0, -3.0],
                   [2.0, 20.0, -1.0],
                   [3.0, 30.0, 0.0],
                   [4.0, 40.0, 2.0],
                   [100.0, -50.0, 9.0]])
# Krum: squared distances among (3,3), (1,0), (10,-10), (0,0), (0,2); n - f - 2 = 2 nearest.
K5 = torch.tensor([[3.0, 3.0], [1.0, 0.0], [10.0, -10.0], [0.0, 0.0], [0.0, 2.0]])


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# --- hand-computed tables -------------------------------------------------------------------

def test_mean_and_median_by_hand():
    assert torch.equal(mean(X5), torch.tensor([22.0, 10.0, 1.4]))
    assert torch.equal(coordinate_median(X5), torch.tensor([3.0, 20.0, 0.0]))
    # even n: the mean of the two middle values, not torch.median's lower one
    assert torch.equal(coordinate_median(X5[:4]), torch.tensor([2.5, 25.0, -0.5]))


def test_trimmed_mean_drops_f_per_side_per_coordinate():
    assert torch.allclose(trimmed_mean(X5, 1), torch.tensor([3.0, 20.0, 1 / 3]))
    assert torch.equal(trimmed_mean(X5, 2), coordinate_median(X5))
    assert torch.equal(trimmed_mean(X5, 0), mean(X5))


def test_krum_and_multi_krum_by_hand():
    assert krum_scores(K5, 1).tolist() == [23.0, 6.0, 381.0, 5.0, 9.0]
    assert torch.equal(krum(K5, 1), K5[3])
    assert torch.allclose(multi_krum(K5, 1, 3), torch.tensor([1 / 3, 2 / 3]))
    assert torch.equal(multi_krum(K5, 1, 5), mean(K5))


def test_geometric_median_by_hand():
    line = torch.tensor([[0.0], [1.0], [2.0], [10.0], [100.0]])
    assert torch.allclose(geometric_median(line), torch.tensor([2.0]), atol=1e-4)
    # (0,0) held by 3 of 5 workers: the unit pulls of the other two sum to sqrt(2) < 3
    heavy = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(geometric_median(heavy), torch.zeros(2), atol=1e-4)


def test_flag_by_hand_unit_mean_times_median_norm():
    # units (1,0), (0,1), (1,1)/sqrt2 average to (1 + 1/sqrt2)/3 each; norms 3, 2, sqrt2: median 2
    x = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    want = torch.full((2,), 2 * (1 + 1 / math.sqrt(2)) / 3)
    assert torch.allclose(flag_aggregate(x, 3), want, atol=1e-6)
    assert torch.allclose(flag_aggregate(x, 99), want, atol=1e-6)  # r clamped to n
    # equal norms and a full subspace: the plain mean
    y = torch.tensor([[3.0, 4.0], [5.0, 0.0], [0.0, -5.0], [-4.0, 3.0]])
    assert torch.allclose(flag_aggregate(y, 4), mean(y), atol=1e-6)


def test_aggregate_dispatches_every_registered_rule():
    assert set(AGGREGATORS) == {"mean", "median", "trimmed-mean", "meamed", "krum", "multi-krum",
                                "bulyan", "geomed", "centered-clipping", "flag"}
    x = torch.cat([K5, K5 + 0.5])  # 10 workers: bulyan needs n >= 4f + 3
    want = {"mean": mean(x), "median": coordinate_median(x), "trimmed-mean": trimmed_mean(x, 1),
            "meamed": meamed(x, 1), "krum": krum(x, 1), "multi-krum": multi_krum(x, 1, 9),
            "bulyan": bulyan(x, 1), "geomed": geometric_median(x),
            "centered-clipping": centered_clipping(x, 1, 100.0),
            "flag": flag_aggregate(x, 2)}  # the default subspace: f + 1
    for name, expected in want.items():
        f = 0 if name == "mean" else 1  # the mean tolerates no faulty worker
        assert torch.equal(aggregate(x, RobustConfig(aggregator=name, f=f)), expected), name
    got = aggregate(K5, RobustConfig(aggregator="multi-krum", f=1, m=3))
    assert torch.equal(got, multi_krum(K5, 1, 3))


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "match"), [
    (lambda: trimmed_mean(X5, 3), r"n >= 2f \+ 1.*n=5, f=3"),
    (lambda: trimmed_mean(X5, -1), "f must be >= 0"),
    (lambda: krum(X5, 2), r"n > 2f \+ 2.*n=5, f=2"),
    (lambda: multi_krum(X5, 1, 0), "m=0"),
    (lambda: multi_krum(X5, 1, 6), "m=6"),
    (lambda: flag_aggregate(X5, 0), "r >= 1, got r=0"),
    (lambda: mean(torch.zeros(3)), r"\(n, d\)"),
    (lambda: aggregate(X5, RobustConfig(aggregator="median", f=3)), "n=5, f=3"),
    (lambda: aggregate(X5, RobustConfig(aggregator="flag", f=3)), "n=5, f=3"),
    (lambda: aggregate(X5, RobustConfig(aggregator="krum", f=2)), "n=5, f=2"),
])
def test_rules_reject_what_they_cannot_tolerate(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"aggregator": "avg"}, "aggregator"),
    ({"f": -1}, "RobustConfig.f"),
    ({"subspace": -2}, "RobustConfig.subspace"),
    ({"m": -1}, "RobustConfig.m"),
    ({"max_iters": 0}, "RobustConfig.max_iters"),
    ({"tol": -1.0}, "RobustConfig.tol"),
])
def test_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RobustConfig(**kwargs)


# --- attacks --------------------------------------------------------------------------------

def test_attacks_by_hand():
    honest = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    assert torch.equal(sign_flip(honest), torch.tensor([-2.0, -2.0]))
    assert torch.equal(ipm(honest, 0.5), torch.tensor([-1.0, -1.0]))
    z = alie_z(7, 2)  # s = floor(7/2 + 1) - 2 = 2, z = Phi^-1(5/7)
    assert z == pytest.approx(0.5659, abs=1e-4)
    assert torch.allclose(alie(honest, 7, 2), torch.tensor([2.0 + z, 2.0]))
    a = gaussian(honest, 3.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, gaussian(honest, 3.0, torch.Generator().manual_seed(5)))
    assert torch.equal(craft("alie", honest, n_total=7, f=2), alie(honest, 7, 2))
    with pytest.raises(ValueError, match="n_total=7, f=4"):
        alie(honest, 7, 4)
    with pytest.raises(ValueError, match="'nope' is unknown"):
        craft("nope", honest, n_total=7, f=2)


# --- robustness -----------------------------------------------------------------------------

N, F, D = 7, 2, 200


def honest_stack(seed: int) -> torch.Tensor:
    """N - F gradients around one direction (each at cosine ~0.9 to their mean)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(D, generator=g)
    return u + 0.45 * torch.randn(N - F, D, generator=g)


def attacked(honest: torch.Tensor, attack: str, seed: int) -> torch.Tensor:
    params = {"ipm": {"eps": 100.0}, "gaussian": {"std": 100.0}}.get(attack, {})
    bad = craft(attack, honest, n_total=N, f=F,
                generator=torch.Generator().manual_seed(1000 + seed), **params)
    return torch.cat([honest, bad.expand(F, D)])


ROBUST = ["median", "trimmed-mean", "krum", "multi-krum", "geomed", "flag"]
ATTACKS_UNDER_TEST = ["sign-flip", "ipm", "gaussian", "alie"]


@pytest.mark.parametrize("attack", ATTACKS_UNDER_TEST)
@pytest.mark.parametrize("rule", ROBUST)
def test_robust_rules_stay_with_the_honest_mean(rule, attack):
    for seed in range(3):
        honest = honest_stack(seed)
        x = attacked(honest, attack, seed)
        out = aggregate(x, RobustConfig(aggregator=rule, f=F))  # flag: its default subspace
        assert cos(out, honest.mean(0)) > 0.85, (rule, attack, seed)
        assert out.norm() < 3 * honest.norm(dim=1).max(), (rule, attack, seed)


@pytest.mark.parametrize("attack", ["ipm", "gaussian"])
def test_the_plain_mean_fails_the_same_check(attack):
    honest = honest_stack(0)
    out = aggregate(attacked(honest, attack, 0), RobustConfig(aggregator="mean"))
    assert cos(out, honest.mean(0)) < 0.5


# --- flag -----------------------------------------------------------------------------------

def test_flag_without_attackers_follows_the_mean():
    x = honest_stack(1)
    assert cos(flag_aggregate(x, x.shape[0]), x.mean(0)) > 0.99
    assert cos(flag_aggregate(x, 1), x.mean(0)) > 0.9


def test_flag_projects_out_orthogonal_outliers_with_a_small_subspace():
    honest = honest_stack(2)
    hm = honest.mean(0)
    g = torch.Generator().manual_seed(9)
    out_dirs = torch.randn(F, D, generator=g)
    out_dirs -= (out_dirs @ hm)[:, None] * hm / (hm @ hm)  # orthogonal to the honest mean
    x = torch.cat([honest, 1000 * out_dirs])
    small = flag_aggregate(x, 1)
    assert cos(small, hm) > 0.99
    assert all(abs(cos(small, o)) < 0.05 for o in out_dirs)
    assert cos(mean(x), hm) < 0.1
    # the full subspace keeps one unit vote per outlier: bounded, but not removed
    full = flag_aggregate(x, N)
    assert 0.9 < cos(full, hm) < cos(small, hm)


def test_flag_magnitude_is_the_median_norm_at_most():
    honest = honest_stack(3)
    x = torch.cat([honest, -1e6 * honest.mean(0).expand(F, D)])
    out = flag_aggregate(x, N)
    assert out.norm() <= x.norm(dim=1).median() * (1 + 1e-6)
    assert cos(out, honest.mean(0)) > 0.85


def test_flag_is_permutation_invariant_and_deterministic():
    x = attacked(honest_stack(4), "gaussian", 4)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    for r in (1, 3, N):
        out = flag_aggregate(x, r)
        assert torch.allclose(flag_aggregate(x[perm], r), out, rtol=1e-4, atol=1e-5), r
        assert torch.equal(flag_aggregate(x.clone(), r), out), r


def test_flag_survives_zero_gradients():
    x = honest_stack(5)
    x[0] = 0
    out = flag_aggregate(x, 2)
    assert torch.isfinite(out).all()
    assert cos(out, x.mean(0)) > 0.9
    assert torch.equal(flag_aggregate(torch.zeros(4, 6), 2), torch.zeros(6))


# --- the grad-sync step ---------------------------------------------------------------------

def test_sync_is_a_noop_without_a_process_group():
    lin = torch.nn.Linear(3, 2)
    lin(torch.ones(1, 3)).sum().backward()
    before = [p.grad.clone() for p in lin.parameters()]
    RobustAggregate(RobustConfig(aggregator="median"))(list(lin.parameters()))
    assert all(torch.equal(p.grad, b) for p, b in zip(lin.parameters(), before))


def test_the_gaussian_attack_is_deterministic_and_shared_by_the_attackers():
    """Attacking ranks send the same noise, drawn from the seed and the step (a rank that does
    not attack sends its gradient): no collective is needed for it."""
    stack = honest_stack(6)
    cfg = RobustConfig(aggregator="median", f=2)
    attack = AttackConfig(attack="gaussian", ranks=(1, 3), params={"std": 5.0}, seed=7)

    def sent(rank: int, steps: int = 1) -> torch.Tensor:
        worker = ByzantineWorker(attack, cfg, rank=rank, world_size=5)
        p = torch.nn.Parameter(torch.zeros(stack.shape[1]))
        for _ in range(steps):
            p.grad = stack[rank].clone()
            worker([p])
        return p.grad

    assert torch.equal(sent(1), sent(1)) and torch.equal(sent(1), sent(3))
    assert torch.equal(sent(0), stack[0]) and not torch.equal(sent(1), stack[1])
    assert not torch.equal(sent(1, steps=2), sent(1))  # a new draw each step
    with pytest.raises(ValueError, match="unknown"):
        AttackConfig(attack="nope", ranks=(1,))


WORLD = 3
BYZANTINE = 2
DIST_CONFIGS = [RobustConfig(aggregator="median", f=1), RobustConfig(aggregator="flag", f=1),
                RobustConfig(aggregator="trimmed-mean", f=1)]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    model.unused = torch.nn.Parameter(torch.ones(2))  # grad stays None: synced as zeros
    return model


def local_grads(rank: int) -> torch.nn.Module:
    model = tiny_model()
    x = torch.arange(8.0).view(2, 4) * (rank + 1) - rank
    model(x).pow(2).sum().backward()
    return model


def flat_grads(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in params])


def _sync_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        results = []
        for cfg in DIST_CONFIGS:
            params = list(local_grads(rank).parameters())
            ByzantineWorker(AttackConfig(attack="sign-flip", ranks=(BYZANTINE,)), cfg, rank=rank,
                            world_size=WORLD)(params)  # the attacking rank sends the attack
            RobustAggregate(cfg)(params)
            results.append([p.grad for p in params])
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_three_gloo_ranks_agree_on_the_robust_aggregate(tmp_path):
    spawn_ranks(_sync_worker, WORLD, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    stack = torch.stack([flat_grads(list(local_grads(r).parameters())) for r in range(WORLD)])
    honest = [r for r in range(WORLD) if r != BYZANTINE]
    stack[BYZANTINE] = sign_flip(stack[honest])
    for i, cfg in enumerate(DIST_CONFIGS):
        grads = [torch.cat([g.reshape(-1) for g in rank[i]]) for rank in ranks]
        assert all(torch.equal(g, grads[0]) for g in grads[1:]), cfg
        assert torch.allclose(grads[0], aggregate(stack, cfg), rtol=1e-5, atol=1e-6), cfg
        assert torch.equal(grads[0][-2:], torch.zeros(2))  # the unused parameter
