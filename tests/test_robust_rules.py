"""Robust rules added for issue 15: selection, Bulyan, MeaMed, centered clipping, the
pre-aggregators and their chain, non-finite rows, Flag's pairwise terms and subspace."""

from __future__ import annotations

import pytest
import torch
from test_robust import X5

from disktrain.robust import (
    AGGREGATORS,
    Aggregator,
    RobustConfig,
    aggregate,
    bucketing,
    bulyan,
    centered_clipping,
    clip,
    coordinate_median,
    default_subspace,
    flag_aggregate,
    flag_basis,
    geometric_median,
    krum,
    meamed,
    mean,
    multi_krum,
    nnm,
    trimmed_mean,
)
from disktrain.robust.select import batcher_pairs, median, order_stats


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# --- selection --------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [*range(1, 18), 31, 32, 33, 40])
def test_order_stats_equal_a_full_sort(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-3, 4, (n, 300), generator=g).float()  # many ties
    x[:, :150] = torch.randn(n, 150, generator=g)
    want = x.sort(dim=0).values
    assert torch.equal(order_stats(x, tuple(range(n))), want)
    assert torch.equal(order_stats(x, (n - 1, 0)), want[[n - 1, 0]])
    assert torch.equal(median(x), (want[(n - 1) // 2] + want[n // 2]) / 2)
    assert torch.allclose(median(x), x.quantile(0.5, dim=0))


def test_batcher_network_sorts_every_zero_one_input():
    for n in range(1, 11):  # the 0-1 principle: sorting all 2^n 0-1 inputs proves a network
        bits = (torch.arange(2 ** n)[None, :] >> torch.arange(n)[:, None]) & 1
        assert torch.equal(order_stats(bits.float(), tuple(range(n))),
                           bits.float().sort(dim=0).values), n
    assert len(batcher_pairs(16)) == 63


def test_order_stats_rejects_ranks_outside_the_stack():
    with pytest.raises(ValueError, match=r"\[0, 5\), got \(5,\)"):
        order_stats(X5, (5,))


def test_trimmed_mean_and_median_unchanged_by_selection():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1000, generator=g)
    assert torch.allclose(trimmed_mean(x, 3), x.sort(dim=0).values[3:13].mean(dim=0))
    assert torch.allclose(coordinate_median(x), x.quantile(0.5, dim=0))


# --- rules by hand ----------------------------------------------------------------------------

def test_meamed_by_hand():
    # per column: median 3 / 20 / 0; the 4 closest values: 1..4 / 10..40 / -3,-1,0,2
    assert torch.allclose(meamed(X5, 1), torch.tensor([2.5, 25.0, -0.5]))
    assert torch.equal(meamed(X5, 0), mean(X5))


def test_bulyan_by_hand():
    # repeated Krum picks 2, then 1 (tie with 3: lowest index), 3, 0, 4; the 3 of those closest
    # to their median 2 average to 2
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0], [-100.0]])
    assert torch.equal(bulyan(x, 1), torch.tensor([2.0]))
    assert torch.equal(bulyan(X5, 0), mean(X5))  # f = 0: every worker, every value


def test_centered_clipping_by_hand():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    one = centered_clipping(x, 1, tau=1.0)  # (3,4) clipped to (0.6, 0.8), averaged with zeros
    assert torch.allclose(one, torch.tensor([0.2, 0.8 / 3]))
    two = centered_clipping(x, 1, tau=1.0, iters=2)
    step = torch.tensor([0.6, 0.8]) - 2 * one  # the far row clipped again, the zeros not
    assert torch.allclose(two, one + step / 3)
    assert torch.allclose(centered_clipping(x, 1, tau=1.0, center=one), two)
    assert torch.allclose(centered_clipping(x, 1, tau=100.0), mean(x))


def test_pre_aggregators_by_hand():
    line = torch.tensor([[0.0], [1.0], [10.0]])
    assert torch.equal(nnm(line, 1), torch.tensor([[0.5], [0.5], [5.5]]))
    assert torch.equal(nnm(line, 0), mean(line).expand(3, 1))
    assert torch.allclose(clip(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0),
                          torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    x = torch.arange(5.0)[:, None]
    out = bucketing(x, 2, torch.Generator().manual_seed(3))
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, torch.stack([x[perm[:2]].mean(0), x[perm[2:4]].mean(0),
                                         x[perm[4:]].mean(0)]))
    assert torch.equal(bucketing(x, 1, torch.Generator().manual_seed(3)).sort(dim=0).values, x)


# --- conditions -------------------------------------------------------------------------------

@pytest.mark.parametrize(("call", "match"), [
    (lambda: bulyan(torch.zeros(6, 2), 1), r"bulyan needs n >= 4f \+ 3, got n=6, f=1"),
    (lambda: meamed(X5, 3), r"meamed needs n >= 2f \+ 1, got n=5, f=3"),
    (lambda: centered_clipping(X5, 3, 1.0), r"centered_clipping needs n >= 2f \+ 1.*n=5, f=3"),
    (lambda: centered_clipping(X5, 1, 0.0), "tau > 0, got tau=0.0"),
    (lambda: nnm(X5, 5), r"nnm needs n >= f \+ 1, got n=5, f=5"),
    (lambda: bucketing(X5, 0), "s >= 1, got s=0"),
    (lambda: clip(X5, -1.0), "c > 0, got c=-1.0"),
    (lambda: default_subspace(4, 2), r"flag needs n >= 2f \+ 1, got n=4, f=2"),
    (lambda: flag_aggregate(X5, 2, lam=-1.0), "lam=-1.0"),
    (lambda: aggregate(torch.zeros(8, 3), RobustConfig(aggregator="trimmed-mean", f=2,
                                                       pre_aggregate=("bucketing",))),
     r"n=4, f=2 \(the rows left by pre-aggregation bucketing of n=8 workers\)"),
])
def test_rules_name_their_condition(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"pre_aggregate": ("nnm", "mix")}, "'mix' is unknown"),
    ({"bucket_size": 0}, "RobustConfig.bucket_size"),
    ({"cc_iters": 0}, "RobustConfig.cc_iters"),
    ({"clip_norm": 0.0}, "RobustConfig.clip_norm"),
    ({"cc_tau": float("inf")}, "RobustConfig.cc_tau"),
    ({"flag_lambda": -1.0}, "RobustConfig.flag_lambda"),
    ({"seed": -1}, "RobustConfig.seed"),
])
def test_config_names_the_bad_new_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RobustConfig(**kwargs)


def test_config_keeps_the_old_constructor_and_takes_a_list_of_pre_aggregators():
    cfg = RobustConfig(aggregator="flag", f=1, subspace=2)
    assert (cfg.pre_aggregate, cfg.flag_lambda) == ((), 0.0)
    assert RobustConfig(pre_aggregate=["nnm", "clip"]).pre_aggregate == ("nnm", "clip")


# --- non-finite rows --------------------------------------------------------------------------

def honest(n: int = 9, d: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g) + 0.3 * torch.randn(n, d, generator=g)


F_RULES = {"trimmed-mean": trimmed_mean, "meamed": meamed, "krum": krum, "bulyan": bulyan,
           "multi-krum": lambda x, f: multi_krum(x, f, x.shape[0] - f),
           "centered-clipping": lambda x, f: centered_clipping(x, f, 100.0)}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("rule", sorted(F_RULES))
def test_a_nonfinite_row_counts_into_f(rule, bad):
    x = honest(11)
    poisoned = x.clone()
    poisoned[4, 7] = bad
    rest = torch.cat([x[:4], x[5:]])
    fn = F_RULES[rule]
    assert torch.equal(fn(poisoned, 2), fn(rest, 1)), rule
    poisoned[9] = bad
    poisoned[10, 0] = bad
    assert torch.isnan(fn(poisoned, 2)).all(), rule  # 3 faulty rows > f = 2: no aggregate


@pytest.mark.parametrize("rule", [coordinate_median, geometric_median,
                                  lambda x: flag_aggregate(x, 2)])
def test_majority_rules_drop_a_faulty_minority(rule):
    x = honest(7)
    poisoned = x.clone()
    poisoned[[1, 5]] = float("nan")
    poisoned[3, 0] = float("inf")
    assert torch.equal(rule(poisoned), rule(x[[0, 2, 4, 6]]))
    poisoned[6, 1] = float("nan")  # 4 of 7: a faulty majority
    assert torch.isnan(rule(poisoned)).all()


def test_mean_tolerates_no_faulty_row():
    x = honest(4)
    x[2, 0] = float("inf")
    assert torch.isnan(mean(x)).all()


def test_pre_aggregators_pass_a_faulty_row_through_unmixed():
    x = honest(8)
    poisoned = x.clone()
    poisoned[2] = float("nan")
    rest = torch.cat([x[:2], x[3:]])
    out = nnm(poisoned, 2)
    assert torch.equal(out[:7], nnm(rest, 1)) and torch.isnan(out[7]).all()
    assert torch.equal(clip(poisoned, 1.0)[:7], clip(rest, 1.0))
    assert torch.isnan(clip(poisoned, 1.0)[7]).all()
    gen = torch.Generator().manual_seed(0)
    buckets = bucketing(poisoned, 2, gen)
    assert buckets.shape[0] == 5 and torch.isfinite(buckets[:4]).all()


@pytest.mark.parametrize("chain", [(), ("nnm",), ("clip",), ("nnm", "clip"), ("bucketing",)])
@pytest.mark.parametrize("rule", sorted(AGGREGATORS))
def test_every_rule_and_chain_survives_a_nan_worker(rule, chain):
    x = honest(16, seed=2)
    x[5] = float("nan")
    if rule == "mean" or (rule == "bulyan" and chain == ("bucketing",)):
        pytest.skip("the mean tolerates nothing; bulyan needs 7 rows for f = 1, bucketing "
                    "leaves 8")
    cfg = RobustConfig(aggregator=rule, f=1 if chain == ("bucketing",) else 2,
                       pre_aggregate=chain)
    out = aggregate(x, cfg)
    assert torch.isfinite(out).all(), (rule, chain)
    assert cos(out, honest(16, seed=2).mean(0)) > 0.9, (rule, chain)


# --- chains and state -------------------------------------------------------------------------

def test_a_chain_applies_its_stages_in_order():
    x = honest(8, seed=3)
    x[0] *= 50
    cfg = RobustConfig(aggregator="trimmed-mean", f=2, pre_aggregate=("nnm", "clip"),
                       clip_norm=3.0)
    assert torch.equal(aggregate(x, cfg), trimmed_mean(clip(nnm(x, 2), 3.0), 2))
    swapped = RobustConfig(aggregator="trimmed-mean", f=2, pre_aggregate=("clip", "nnm"),
                           clip_norm=3.0)
    assert torch.equal(aggregate(x, swapped), trimmed_mean(nnm(clip(x, 3.0), 2), 2))


def test_aggregator_carries_the_center_and_the_step():
    x = honest(5, seed=4)
    cc = Aggregator(RobustConfig(aggregator="centered-clipping", f=1, cc_tau=0.5))
    first, second = cc(x), cc(x)
    assert torch.equal(first, centered_clipping(x, 1, 0.5))
    assert torch.equal(second, centered_clipping(x, 1, 0.5, center=first))
    cfg = RobustConfig(aggregator="median", pre_aggregate=("bucketing",), bucket_size=2, seed=5)
    a, b = Aggregator(cfg), Aggregator(cfg)
    outs = [a(x) for _ in range(4)]
    assert all(torch.equal(o, b(x)) for o in outs)  # the same on every rank
    assert not all(torch.equal(o, outs[0]) for o in outs)  # a new permutation each step
    assert torch.equal(outs[2], aggregate(x, cfg, step=2))


# --- Flag -------------------------------------------------------------------------------------

def test_default_subspace_is_f_plus_one_below_n():
    assert [default_subspace(8, f) for f in range(4)] == [1, 2, 3, 4]
    x = honest(8, seed=5)
    want = flag_aggregate(x, 3)
    assert torch.equal(aggregate(x, RobustConfig(aggregator="flag", f=2)), want)


def planted(seed: int, n_honest: int = 9, n_out: int = 3, k: int = 2, d: int = 120):
    """Honest gradients in a planted k-dimensional subspace (orthonormal basis b), and
    outliers in random directions with 10x their norm."""
    g = torch.Generator().manual_seed(seed)
    b = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    coef = torch.randn(n_honest, k, generator=g, dtype=torch.float64) + torch.tensor([3.0, 0.0])
    hon = coef @ b.T
    out = torch.randn(n_out, d, generator=g, dtype=torch.float64)
    out *= 10 * hon.norm(dim=1).median() / out.norm(dim=1, keepdim=True)
    return torch.cat([hon, out]).float(), b, hon


@pytest.mark.parametrize("seed", range(3))
def test_flag_recovers_a_planted_honest_subspace(seed):
    x, b, hon = planted(seed)
    y = flag_basis(x, 2)
    assert y.shape == (120, 2)
    assert torch.allclose(y.T @ y, torch.eye(2, dtype=y.dtype), atol=1e-6)
    # principal angles ~0: the basis lies in span(b) and spans it
    assert torch.linalg.svdvals(b.T @ y).min() > 0.999
    out = flag_aggregate(x, 2).double()
    residual = out - b @ (b.T @ out)
    assert residual.norm() < 1e-3 * out.norm()
    assert cos(out, hon.mean(0)) > 0.98
    full = flag_aggregate(x, x.shape[0]).double()  # r = n: the identity, outliers kept
    assert (full - b @ (b.T @ full)).norm() > 0.15 * full.norm()


def test_flag_pairwise_terms_change_the_fit_and_vanish_with_lambda():
    x, _, _ = planted(7, n_out=2)
    base = flag_aggregate(x, 2)
    assert torch.allclose(flag_aggregate(x, 2, lam=1e-9), base, atol=1e-5)
    heavy = flag_aggregate(x, 1, lam=50.0)
    assert torch.isfinite(heavy).all()
    assert not torch.allclose(heavy, flag_aggregate(x, 1), atol=1e-4)
    assert torch.equal(heavy, flag_aggregate(x.clone(), 1, lam=50.0))  # deterministic
    cfg = RobustConfig(aggregator="flag", f=2, flag_lambda=50.0, subspace=1)
    assert torch.equal(aggregate(x, cfg), heavy)


def test_flag_default_survives_a_bloc_that_outweighs_the_honest_direction():
    # 5 noisy honest workers (cosine ~0.7 to u), 3 colluders orthogonal to their mean: r = 1
    # follows the bloc, the default r = f + 1 keeps the honest direction (the mean: 0.49)
    for seed in (0, 2):
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(300, generator=g)
        hon = u + torch.randn(5, 300, generator=g)
        hm = hon.mean(0)
        o = torch.randn(300, generator=g)
        o -= (o @ hm) * hm / (hm @ hm)
        x = torch.cat([hon, (3 * hm.norm() * o / o.norm()).expand(3, -1)])
        assert abs(cos(flag_aggregate(x, 1), hm)) < 0.01
        assert cos(aggregate(x, RobustConfig(aggregator="flag", f=3)), hm) > 0.7
        assert cos(mean(x), hm) < 0.5


def test_flag_fit_in_gram_space_equals_the_explicit_weighted_columns():
    # the reference builds the d x (n + n(n-1)) matrix [w_i x_i, w_ij (x_i - x_j)] and takes its
    # top-r left singular vectors; the fit from the n x n Gram matrix must span the same space
    from disktrain.robust.flag import _fit, _unit_gram

    g = torch.Generator().manual_seed(0)
    n, r = 6, 2
    x = torch.randn(n, 40, generator=g, dtype=torch.float64)
    gram, norms = _unit_gram(x)
    unit = (x / norms[:, None]).T
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    pair_w = torch.rand(n, n, generator=g, dtype=torch.float64)
    pair_w = (pair_w + pair_w.T) / 2
    pair_w.fill_diagonal_(0)
    cols = [w[i] * unit[:, i] for i in range(n)]
    cols += [pair_w[i, j] * (unit[:, i] - unit[:, j]) for i in range(n) for j in range(n) if i != j]
    want = torch.linalg.svd(torch.stack(cols, 1), full_matrices=False).U[:, :r]
    a, p = _fit(gram, w, pair_w, r)
    y = unit @ a
    assert torch.allclose(y.T @ y, torch.eye(r, dtype=y.dtype), atol=1e-9)
    assert torch.allclose(torch.linalg.svdvals(want.T @ y), torch.ones(r, dtype=y.dtype))
    assert torch.allclose(p, y.T @ unit, atol=1e-9)
