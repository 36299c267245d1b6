"""Online evaluation sampling with the device kernels (their CPU twins here) gives the same
neighborhoods, and so the same accuracy, as the CPU kernels."""

import numpy as np
import pytest
import torch
from tinygraphs import make_dataset

from disktrain.models.gnn import GNNConfig, build_model
from disktrain.sample.plan import sampling_key
from disktrain.storage.dataset import Dataset
from disktrain.train.evaluate import _sample, device_graph, evaluate


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
    ids = np.asarray(dataset.split("val"), np.int64)
    for start in range(0, len(ids), 17):
        seeds = ids[start:start + 17]
        key = sampling_key(3, 1 << 30)
        nodes_cpu, blocks_cpu = _sample(dataset, seeds, fanouts, key, None)
        nodes_dev, blocks_dev = _sample(dataset, seeds, fanouts, key, graph)
        assert np.array_equal(nodes_cpu, nodes_dev)
        assert len(blocks_cpu) == len(blocks_dev) == len(fanouts)
        for a, b in zip(blocks_cpu, blocks_dev):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            assert (a[2], a[3]) == (b[2], b[3])


def test_online_accuracy_is_the_same_either_way(dataset):
    torch.manual_seed(0)
    model = build_model(GNNConfig(model="sage", in_dim=16, hidden=16,
                                  num_classes=int(dataset.meta.num_classes), num_layers=2))
    graph = device_graph(dataset, torch.device("cpu"), force=True)
    args = (model, dataset, "test", (4, 3), 32, 0, torch.device("cpu"))
    assert evaluate(*args) == evaluate(*args, graph=graph)
