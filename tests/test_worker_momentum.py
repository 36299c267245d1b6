"""Worker momentum (disktrain.robust.momentum): the running average each worker sends, its
equivalence under the mean to the server's SGD momentum, non-finite gradients, the options."""

import pytest
import torch

from disktrain.cli import build_parser, configs
from disktrain.robust import WorkerMomentum
from disktrain.robust.grads import flat_grads
from disktrain.train import TrainConfig


def params_with(grad: list[float]) -> list[torch.nn.Parameter]:
    p = torch.nn.Parameter(torch.zeros(len(grad)))
    p.grad = torch.tensor(grad)
    return [p]


def test_the_worker_sends_the_running_average_of_its_gradients():
    m = WorkerMomentum(0.75, params_with([0.0, 0.0]))
    first = params_with([4.0, -8.0])
    m(first)
    assert flat_grads(first).tolist() == [1.0, -2.0]  # 0.25 * g1
    second = params_with([0.0, 4.0])
    m(second)
    assert flat_grads(second).tolist() == [0.75, -0.5]  # 0.75 * (1, -2) + 0.25 * (0, 4)
    second[0].grad.zero_()  # the gradient handed on is a copy, not the average itself
    assert m.buffer.tolist() == [0.75, -0.5]


def test_a_non_finite_gradient_is_sent_as_is_and_leaves_the_average():
    m = WorkerMomentum(0.5, params_with([0.0, 0.0]))
    m(params_with([2.0, 2.0]))
    bad = params_with([float("nan"), 1.0])
    m(bad)
    assert torch.isnan(bad[0].grad[0]) and bad[0].grad[1] == 1.0
    assert m.buffer.tolist() == [1.0, 1.0]


def test_on_one_worker_it_is_sgd_momentum_with_the_lr_scaled_by_one_minus_beta():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    twin = torch.nn.Linear(5, 3)
    twin.load_state_dict(model.state_dict())
    beta = 0.9
    mine = torch.optim.SGD(model.parameters(), lr=0.5)
    ref = torch.optim.SGD(twin.parameters(), lr=0.5 * (1 - beta), momentum=beta)
    m = WorkerMomentum(beta, list(model.parameters()))
    for _ in range(4):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for net, opt in ((model, mine), (twin, ref)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
        m(list(model.parameters()))
        mine.step(), ref.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.1])
def test_beta_must_be_a_fraction(beta):
    with pytest.raises(ValueError, match="worker momentum beta must be in \\(0, 1\\)"):
        WorkerMomentum(beta, params_with([0.0]))


def test_the_option_reaches_the_config_and_is_checked():
    args = build_parser("train").parse_args(["train", "DS", "--worker-momentum", "0.9",
                                             "--optimizer", "sgd"])
    assert configs(args)[""].worker_momentum == 0.9
    with pytest.raises(ValueError, match="worker_momentum must be in \\[0, 1\\), got 1.0"):
        TrainConfig(dataset="DS", worker_momentum=1.0)
