"""Core split between compute and the loader."""

import pytest
import torch

from disktrain.train import threads
from disktrain.train.threads import compute_threads, loader_threads, torch_threads

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("cores", "omp", "device", "requested", "expected"), [
    (2, None, CPU, 0, 2),      # every core: the loader's reads cost little CPU
    (16, None, CPU, 0, 16),
    (1, None, CPU, 0, 1),
    (16, None, GPU, 0, None),  # torch's default on a GPU
    (16, "1", CPU, 0, None),   # a launcher's OMP_NUM_THREADS stands
    (2, None, CPU, 2, 2),      # an explicit request wins
    (16, "1", GPU, 3, 3),
])
def test_compute_threads(monkeypatch, cores, omp, device, requested, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert compute_threads(requested, device) == expected


@pytest.mark.parametrize(("cores", "compute", "expected"), [
    (2, 2, 1),      # compute on every core: the assembly still gets a thread
    (16, 12, 4),    # the cores compute leaves
    (16, None, 0),  # compute threads left to torch: Numba's default
])
def test_loader_threads(monkeypatch, cores, compute, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    assert loader_threads(compute) == expected


def test_negative_request_is_refused():
    with pytest.raises(ValueError, match="compute_threads"):
        compute_threads(-1, CPU)


def test_torch_threads_restores_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
