"""Online evaluation sampling with the device kernels (their CPU twins here) gives the same
neighborhoods, and so the same accuracy, as the CPU kernels."""

import numpy as np
import pytest
import torch
from tinygraphs import make_dataset

from disktrain.models.gnn import GNNConfig, build_model
from disktrain.storage.dataset import Dataset
from disktrain.train.evaluate import OnlineBatches, device_graph, evaluate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return Dataset(make_dataset(tmp_path_factory.mktemp("evs") / "g"))


def test_no_device_graph_on_a_cpu_unless_forced(dataset):
    assert device_graph(dataset, torch.device("cpu")) is None
    indptr, indices = device_graph(dataset, torch.device("cpu"), force=True)
    assert np.array_equal(indptr.numpy(), dataset.indptr)
    assert np.array_equal(indices.numpy(), dataset.indices)


@pytest.mark.parametrize("fanouts", [(4, 3), (-1, 2), (5, 0, 2)])
def test_device_sampling_gives_the_cpu_kernels_blocks(dataset, fanouts):
    graph = device_graph(dataset, torch.device("cpu"), force=True)
    args = (dataset, "val", fanouts, 17, 3, torch.device("cpu"))
    for cpu, dev in zip(OnlineBatches(*args), OnlineBatches(*args, graph=graph), strict=True):
        assert torch.equal(cpu.n_id, dev.n_id)
        assert len(cpu.blocks) == len(dev.blocks) == len(fanouts)
        for a, b in zip(cpu.blocks, dev.blocks):
            assert torch.equal(a.src, b.src) and torch.equal(a.dst, b.dst)
            assert (a.num_src, a.num_dst) == (b.num_src, b.num_dst)


def test_online_accuracy_is_the_same_either_way(dataset):
    torch.manual_seed(0)
    model = build_model(GNNConfig(model="sage", in_dim=16, hidden=16,
                                  num_classes=int(dataset.meta.num_classes), num_layers=2))
    graph = device_graph(dataset, torch.device("cpu"), force=True)
    args = (model, dataset, "test", (4, 3), 32, 0, torch.device("cpu"))
    assert evaluate(*args) == evaluate(*args, graph=graph)
