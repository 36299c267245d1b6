"""The packed layout: slot codes, the two packed runs, where rows land, and that packing then
assembling reproduces the raw rows exactly, for every mix of tiers."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from disktrain.loader.device import DeviceAssembler
from disktrain.pack.slots import NOT_CACHED, RowLayout, gpu_code, pack_slots
from disktrain.pack.tiers import Tiers

G0, G1, C1, P = -1, -2, 1, NOT_CACHED  # GPU rows 0 and 1, CPU row 1, not cached


def _codes(table: dict[int, int]) -> np.ndarray:
    codes = np.full(20, NOT_CACHED, np.int64)
    for node, code in table.items():
        codes[node] = code
    return codes


def test_gpu_code_is_its_own_inverse():
    slots = np.arange(4)
    assert gpu_code(slots).tolist() == [-1, -2, -3, -4]
    assert np.array_equal(gpu_code(gpu_code(slots)), slots)
    assert Tiers(np.array([3, 7]), np.array([5])).codes(8)[[3, 7, 5, 0]].tolist() == [
        -1, -2, 0, NOT_CACHED]


def test_a_batch_of_every_tier():
    nodes = np.array([10, 11, 12, 15, 14, 13])  # inner: 10, 11; last hop: 12, 15, 14, 13
    codes = _codes({10: G0, 11: P, 12: C1, 15: P, 14: G1, 13: P})
    slots, (outer, inner) = pack_slots(codes, nodes, inner=2, n_cpu=2)
    # packed: last hop 13, 15 (ascending), then inner 11; packed row k has code 2 + k
    assert outer.tolist() == [13, 15] and inner.tolist() == [11]
    assert slots.tolist() == [-1, 4, 1, 3, -2, 2]
    layout = RowLayout.of(nodes, 2, slots, n_cpu=2)
    assert (layout.num_rows, layout.inner, layout.num_read, layout.num_packed) == (6, 2, 2, 3)
    assert layout.newpos.tolist() == [0, 1, 4, 3, 5, 2]
    assert layout.input_nodes.tolist() == [10, 11, 13, 15, 12, 14]
    assert layout.inner_slots.tolist() == [-1, 4]
    assert layout.cached_slots.tolist() == [1, -2]
    assert layout.gpu_pos.tolist() == [0, 5] and layout.gpu_slot.tolist() == [0, 1]
    assert layout.relabel(np.array([3, 5, 0])).tolist() == [3, 2, 0]
    assert layout.place(np.array([0, 1, 2, 3, 4, 5])).tolist() == [0, 1, 5, 3, 2, 4]


@pytest.mark.parametrize("code,inner,num_read,num_packed,gpu", [
    (P, 2, 2, 4, 0),    # all packed: the last hop in place, the inner rows gathered
    (C1 - 1, 2, 0, 0, 0),  # all in the CPU cache (row 0)
    (G0, 2, 0, 0, 4),   # all in the GPU cache (row 0)
    (P, 0, 4, 4, 0),    # no inner rows: everything read in place
    (P, 4, 0, 4, 0),    # no last-hop rows: everything gathered
    (G0, 0, 0, 0, 4),
    (C1 - 1, 4, 0, 0, 0),
])
def test_one_tier_and_empty_runs(code, inner, num_read, num_packed, gpu):
    nodes = np.array([7, 3, 9, 1])
    slots, runs = pack_slots(_codes({n: code for n in nodes}), nodes, inner, n_cpu=1)
    assert sum(len(r) for r in runs) == num_packed
    layout = RowLayout.of(nodes, inner, slots, n_cpu=1)
    assert (layout.num_read, layout.num_packed, len(layout.gpu_pos)) == (num_read, num_packed,
                                                                        gpu)
    assert layout.input_nodes[:inner].tolist() == nodes[:inner].tolist()
    expect_last = sorted(nodes[inner:]) if code == P else nodes[inner:].tolist()
    assert layout.input_nodes[inner:].tolist() == expect_last
    assert len(layout.inner_slots) == inner
    assert len(layout.cached_slots) == 4 - inner - num_read


def test_an_empty_batch():
    nodes = np.zeros(0, np.int64)
    slots, runs = pack_slots(_codes({}), nodes, 0, n_cpu=3)
    layout = RowLayout.of(nodes, 0, slots, n_cpu=3)
    assert (layout.num_rows, layout.num_read, layout.num_packed) == (0, 0, 0)
    assert [len(r) for r in runs] == [0, 0] and len(layout.gpu_pos) == 0
    buf = np.ones((RowLayout.buffer_rows(0, 0, 0), 2), np.float32)
    assert layout.gather(buf, np.zeros((3, 2), np.float32)).shape == (0, 2)


def test_bad_arguments_name_the_values():
    nodes = np.array([1, 2, 3])
    with pytest.raises(ValueError, match="3 input rows needs 3 slots.*got 2 slots"):
        RowLayout.of(nodes, 1, np.array([0, 1]), n_cpu=2)
    with pytest.raises(ValueError, match="inner 4"):
        RowLayout.of(nodes, 4, np.array([0, 1, 2]), n_cpu=2)
    with pytest.raises(ValueError, match=r"inner must be in \[0, 3\], got -1"):
        pack_slots(_codes({}), nodes, -1, n_cpu=0)


def test_buffer_rows_hold_the_matrix_and_the_padded_range():
    assert RowLayout.buffer_rows(10, 4, 8) == 12  # packed range past the matrix's end
    assert RowLayout.buffer_rows(10, 4, 4) == 10


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_packing_then_assembling_reproduces_the_raw_rows(data):
    num_nodes = data.draw(st.integers(1, 40), "num_nodes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed"))
    perm = rng.permutation(num_nodes)
    n_gpu = data.draw(st.integers(0, num_nodes), "n_gpu")
    n_cpu = data.draw(st.integers(0, num_nodes - n_gpu), "n_cpu")
    tiers = Tiers(np.sort(perm[:n_gpu]), np.sort(perm[n_gpu:n_gpu + n_cpu]))
    nodes = rng.permutation(num_nodes)[:data.draw(st.integers(0, num_nodes), "n")]
    inner = data.draw(st.integers(0, len(nodes)), "inner")
    dim, chunk = 3, data.draw(st.integers(1, 5), "chunk_rows")
    raw = rng.standard_normal((num_nodes, dim)).astype(np.float32)

    slots, runs = pack_slots(tiers.codes(num_nodes), nodes, inner, n_cpu)
    packed_ids = np.concatenate(runs)
    for run in runs:
        assert np.all(np.diff(run) > 0)  # each run ascending
    for i, s in enumerate(slots):  # every code names the row holding node i
        owner = (tiers.gpu_nodes[gpu_code(s)] if s < 0 else tiers.cpu_nodes[s] if s < n_cpu
                 else packed_ids[s - n_cpu])
        assert owner == nodes[i]

    layout = RowLayout.of(nodes, inner, slots, n_cpu)
    padded = -(-len(packed_ids) // chunk) * chunk
    buf = np.full((RowLayout.buffer_rows(len(nodes), inner, padded), dim), np.nan, np.float32)
    buf[inner:inner + padded] = 0  # chunk padding
    buf[inner:inner + len(packed_ids)] = raw[packed_ids]  # the read
    x = layout.gather(buf, raw[tiers.cpu_nodes])
    gpu = DeviceAssembler(raw[tiers.gpu_nodes], "cpu")
    x = gpu.assemble(torch.from_numpy(x), layout.gpu_pos, layout.gpu_slot).numpy()
    assert np.array_equal(x, raw[layout.input_nodes])
    assert np.array_equal(layout.input_nodes[layout.newpos], nodes)
    assert np.array_equal(layout.input_nodes[:inner], nodes[:inner])
    read = layout.input_nodes[inner:inner + layout.num_read]
    assert np.array_equal(read, runs[0])  # the first run is read in place
