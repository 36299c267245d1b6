"""Parity with ByzFL (the EPFL library) on random inputs, for every rule, pre-aggregator and
attack both implement. Install: `pip install --no-deps byzfl` (dev extra).

ByzFL's package __init__ imports torchvision (through its federated framework), which disktrain
does not need; the fixture loads only its aggregators and attacks modules, from their files, under
a bare `byzfl` package object, and removes them again afterwards.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from disktrain.robust import (
    bucketing,
    centered_clipping,
    clip,
    coordinate_median,
    geometric_median,
    ipm,
    krum,
    meamed,
    mean,
    mimic,
    multi_krum,
    nnm,
    opt_alie,
    opt_ipm,
    sign_flip,
    trimmed_mean,
)
from disktrain.robust.attacks import alie

SPEC = importlib.util.find_spec("byzfl")


@pytest.fixture(scope="module")
def byzfl():
    """ByzFL's aggregators, pre-aggregators and attacks, without its package __init__."""
    if SPEC is None or not SPEC.submodule_search_locations:
        pytest.skip("byzfl is not installed (pip install --no-deps byzfl)")
    root = Path(SPEC.submodule_search_locations[0])
    saved = {k: v for k, v in sys.modules.items() if k == "byzfl" or k.startswith("byzfl.")}
    package = types.ModuleType("byzfl")
    package.__path__ = [str(root)]  # submodules resolve; __init__.py never runs
    sys.modules["byzfl"] = package
    try:
        mods = {}
        for name in ("aggregators.aggregators", "aggregators.preaggregators", "attacks.attacks"):
            spec = importlib.util.spec_from_file_location(
                f"byzfl.{name}", root / (name.replace(".", "/") + ".py"))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            mods[name.split(".")[-1]] = mod
        yield types.SimpleNamespace(**mods)
    finally:
        for k in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def stacks():
    for seed, (n, d) in enumerate([(5, 7), (8, 50), (11, 200), (16, 33)]):
        g = torch.Generator().manual_seed(seed)
        yield torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 3


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-5)


def test_rules_match(byzfl):
    agg = byzfl.aggregators
    for x in stacks():
        n = x.shape[0]
        assert close(mean(x), agg.Average()(x))
        assert close(coordinate_median(x), agg.Median()(x))
        for f in range(1, (n - 1) // 2 + 1):
            assert close(trimmed_mean(x, f), agg.TrMean(f=f)(x)), (n, f)
            assert close(meamed(x, f), agg.Meamed(f=f)(x)), (n, f)
            cc = agg.CenteredClipping(L=3, tau=1.5)  # a fresh one: its center starts at zero
            assert close(centered_clipping(x, f, 1.5, iters=3), cc(x)), (n, f)
        for f in range(1, (n - 3) // 2 + 2):  # ByzFL's Krum(f) scores with n - f - 1 neighbours
            assert close(krum(x, f - 1), agg.Krum(f=f)(x)), (n, f)
            assert close(multi_krum(x, f - 1, n - f), agg.MultiKrum(f=f)(x)), (n, f)


def test_geometric_median_converges_to_the_same_point(byzfl):
    for x in stacks():
        theirs = byzfl.aggregators.GeometricMedian(nu=1e-8, T=2000)(x)  # float32 inside
        ours = geometric_median(x, iters=2000, tol=1e-9)
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_pre_aggregators_match(byzfl):
    pre = byzfl.preaggregators
    for x in stacks():
        n = x.shape[0]
        for f in range(n):
            assert close(nnm(x, f), pre.NNM(f=f)(x)), (n, f)
        assert close(clip(x, 2.0), pre.Clipping()(x.clone()))
        for s in (1, 2, 3):
            torch.manual_seed(11)  # ByzFL permutes with the global generator
            theirs = pre.Bucketing(s=s)(x)
            assert close(bucketing(x, s, torch.Generator().manual_seed(11)), theirs), (n, s)


def test_attacks_match(byzfl):
    att, agg, pre = byzfl.attacks, byzfl.aggregators, byzfl.preaggregators
    for x in stacks():
        n = x.shape[0]
        assert close(sign_flip(x), att.SignFlipping()(x))
        assert close(ipm(x, 2.0), att.InnerProductManipulation(tau=2.0)(x))
        assert close(mimic(x, 2), att.Mimic(epsilon=2)(x))
        # ALIE: ByzFL's sample std and fixed tau, disktrain's population std and z(n, f)
        pop = (n - 1) / n
        want = x.mean(0) + 1.5 * pop ** 0.5 * x.std(0, correction=1)
        assert close(alie(x, 10, 2, z=1.5), want)
        assert close(att.ALittleIsEnough(tau=1.5)(x), x.mean(0) + 1.5 * x.std(0, correction=1))
        for f in (1, 3):
            def defend(stack: torch.Tensor, f: int = f) -> torch.Tensor:
                return agg.TrMean(f=f)(pre.Clipping(c=2.0)(stack.clone()))

            theirs = att.Optimal_InnerProductManipulation(
                agg=agg.TrMean(f=f), pre_agg_list=[pre.Clipping(c=2.0)], f=f)(x)
            assert close(opt_ipm(x, f, defend), theirs), (n, f)
            theirs = att.Optimal_ALittleIsEnough(
                agg=agg.TrMean(f=f), pre_agg_list=[pre.Clipping(c=2.0)], f=f)(x)
            assert close(opt_alie(x, f, defend), theirs), (n, f)
