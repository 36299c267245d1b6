"""GNN layers and models against dense references computed with explicit loops (float64)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from disktrain.models import (
    GNN,
    MLP,
    Block,
    GATConv,
    GCNConv,
    GNNConfig,
    SAGEConv,
    build_model,
)

# Layer-2 block of a tiny graph: dst 2 has no in-edges, src 3 (a dst) feeds nobody but itself
# gets messages, src 4..6 are pure neighbours.
EDGES = [(4, 0), (5, 0), (1, 0), (6, 1), (0, 1), (5, 3), (6, 3), (2, 3), (0, 3)]
# Three chained blocks for whole-model tests: 9 -> 7 -> 4 -> 2 nodes.
CHAIN = [
    ([(7, 0), (8, 0), (3, 1), (8, 2), (1, 2), (0, 4), (5, 4), (2, 6), (7, 6), (8, 6)], 9, 7),
    (EDGES, 7, 4),
    ([(2, 0), (3, 0), (1, 0)], 4, 2),
]


def make_block(edges, num_src, num_dst):
    src, dst = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    return Block.from_numpy(src, dst, num_src, num_dst)


def adjacency(block):
    """(num_dst, num_src) dense matrix, A[d, s] = 1 for each edge s -> d."""
    a = torch.zeros(block.num_dst, block.num_src, dtype=torch.float64)
    for s, d in zip(block.src.tolist(), block.dst.tolist()):
        a[d, s] = 1.0
    return a


def sage_dense(conv, x, block):
    a = adjacency(block)
    out = []
    for d in range(block.num_dst):
        nbrs = [s for s in range(block.num_src) if a[d, s]]
        mean = sum((x[s] for s in nbrs), torch.zeros_like(x[0])) / max(len(nbrs), 1)
        out.append(conv.lin_self(x[d]) + mean @ conv.lin_neigh.weight.T)
    return torch.stack(out)


def gcn_dense(conv, x, block):
    a_hat = adjacency(block)
    for i in range(block.num_dst):
        a_hat[i, i] = 1.0
    deg_dst, deg_src = a_hat.sum(1), a_hat.sum(0)
    norm = torch.zeros_like(a_hat)
    for d in range(block.num_dst):
        for s in range(block.num_src):
            if a_hat[d, s]:
                norm[d, s] = 1.0 / math.sqrt(deg_dst[d] * deg_src[s])
    return norm @ (x @ conv.lin.weight.T) + conv.bias


def gat_dense(conv, x, block):
    a = adjacency(block)
    h = (x @ conv.lin.weight.T).view(-1, conv.heads, conv.out_dim)
    out = torch.zeros(block.num_dst, conv.heads, conv.out_dim, dtype=x.dtype)
    for d in range(block.num_dst):
        nbrs = [s for s in range(block.num_src) if a[d, s] and s != d] + [d]
        for k in range(conv.heads):
            logits = torch.stack([
                F.leaky_relu(conv.att_src[k] @ h[s, k] + conv.att_dst[k] @ h[d, k], 0.2)
                for s in nbrs
            ])
            alpha = torch.softmax(logits, 0)
            out[d, k] = sum(alpha[j] * h[s, k] for j, s in enumerate(nbrs))
    out = out.flatten(1) if conv.concat else out.mean(1)
    return out + conv.bias


DENSE = {SAGEConv: sage_dense, GCNConv: gcn_dense, GATConv: gat_dense}


def features(num_rows, dim, seed=0):
    return torch.randn(num_rows, dim, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


LAYERS = [
    pytest.param(lambda: SAGEConv(5, 3), id="sage-narrowing"),
    pytest.param(lambda: SAGEConv(3, 5), id="sage-widening"),
    pytest.param(lambda: GCNConv(5, 3), id="gcn"),
    pytest.param(lambda: GATConv(5, 3, heads=2), id="gat-concat"),
    pytest.param(lambda: GATConv(5, 3, heads=2, concat=False), id="gat-mean"),
]


@pytest.mark.parametrize("make", LAYERS)
def test_layer_matches_dense(make):
    torch.manual_seed(0)
    conv = make().double()
    block = make_block(EDGES, 7, 4)
    x = features(7, conv_in_dim(conv))
    with torch.no_grad():
        got = conv(x, block)
        want = DENSE[type(conv)](conv, x, block)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def conv_in_dim(conv):
    return conv.lin.in_features if hasattr(conv, "lin") else conv.lin_self.in_features


def test_sage_node_without_in_edges_sees_only_itself():
    conv = SAGEConv(4, 2).double()
    block = make_block(EDGES, 7, 4)
    x = features(7, 4)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, block)[2], conv.lin_self(x[2]))


def test_gcn_on_whole_graph_is_kipf():
    n = 5
    edges = [(0, 1), (1, 2), (2, 0), (3, 4)]
    edges += [(d, s) for s, d in edges]
    conv = GCNConv(3, 2).double()
    x = features(n, 3)
    a = adjacency(make_block(edges, n, n)) + torch.eye(n, dtype=torch.float64)
    d_inv_sqrt = torch.diag(a.sum(1).rsqrt())
    want = d_inv_sqrt @ a @ d_inv_sqrt @ x @ conv.lin.weight.T + conv.bias
    with torch.no_grad():
        torch.testing.assert_close(conv(x, make_block(edges, n, n)), want)


@pytest.mark.parametrize("make", [lambda: GCNConv(5, 3), lambda: GATConv(5, 3, heads=2)])
def test_existing_self_edges_are_not_doubled(make):
    conv = make().double()
    x = features(7, 5)
    with torch.no_grad():
        plain = conv(x, make_block(EDGES, 7, 4))
        with_loops = conv(x, make_block(EDGES + [(0, 0), (2, 2)], 7, 4))
    torch.testing.assert_close(plain, with_loops)


def test_gat_attention_rows_sum_to_one():
    conv = GATConv(5, 3, heads=4).double()
    block = make_block(EDGES, 7, 4)
    with torch.no_grad():
        _, dst, alpha = conv.attention(features(7, 5), block)
    assert alpha.shape == (block.num_edges + block.num_dst, 4)
    assert (alpha > 0).all()
    sums = torch.zeros(block.num_dst, 4, dtype=alpha.dtype).index_add_(0, dst, alpha)
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_gat_attention_dropout_only_in_training():
    conv = GATConv(5, 3, heads=2, attn_dropout=0.5).double()
    block, x = make_block(EDGES, 7, 4), features(7, 5)
    conv.eval()
    torch.testing.assert_close(conv(x, block), gat_dense(conv, x, block))
    conv.train()
    _, _, alpha = conv.attention(x, block)
    assert (alpha == 0).any()


@pytest.mark.parametrize("make", LAYERS)
def test_layer_backward_reaches_every_parameter_and_input(make):
    conv = make()
    block = make_block(EDGES, 7, 4)
    x = features(7, conv_in_dim(conv)).float().requires_grad_()
    conv(x, block).square().sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_layer_rejects_wrong_feature_rows():
    with pytest.raises(ValueError, match=r"block.num_src, got \[6, 5\]"):
        GCNConv(5, 3)(torch.zeros(6, 5), make_block(EDGES, 7, 4))


@pytest.mark.parametrize("model", ["sage", "gcn", "gat"])
def test_model_matches_layer_by_layer_dense(model):
    torch.manual_seed(0)
    cfg = GNNConfig(model=model, in_dim=6, hidden=4, num_classes=3, num_layers=3, heads=2)
    net = build_model(cfg).double().eval()
    assert isinstance(net, GNN)
    blocks = [make_block(*spec) for spec in CHAIN]
    x = features(9, 6)
    h = x
    with torch.no_grad():
        for i, (conv, block) in enumerate(zip(net.convs, blocks)):
            h = DENSE[type(conv)](conv, h, block)
            h = h.relu() if i < 2 else h
        got = net(x, blocks)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, h, rtol=1e-12, atol=1e-12)


def test_gat_model_concatenates_hidden_heads_and_averages_last():
    net = build_model(GNNConfig(model="gat", in_dim=6, hidden=8, num_classes=3, heads=4))
    first, last = net.convs
    assert (first.heads, first.out_dim, first.concat) == (4, 2, True)
    assert (last.heads, last.out_dim, last.concat) == (4, 3, False)


def test_mlp_sees_only_the_seed_rows():
    cfg = GNNConfig(model="mlp", in_dim=6, hidden=4, num_classes=3, num_layers=3)
    net = build_model(cfg).eval()
    assert isinstance(net, MLP)
    blocks = [make_block(*spec) for spec in CHAIN]
    x = features(9, 6).float()
    changed = x.clone()
    changed[2:] = 100.0
    torch.testing.assert_close(net(x, blocks), net(changed, blocks))
    assert net(x, blocks).shape == (2, 3)


@pytest.mark.parametrize("model", ["sage", "gcn", "gat", "mlp"])
def test_same_seed_same_model_and_training_outputs(model):
    cfg = GNNConfig(model=model, in_dim=6, hidden=4, num_classes=3, num_layers=3, heads=2,
                    attn_dropout=0.3)
    blocks = [make_block(*spec) for spec in CHAIN]
    x = features(9, 6).float()

    def run():
        torch.manual_seed(1)
        net = build_model(cfg).train()
        return net(x, blocks), net.state_dict()

    (out_a, state_a), (out_b, state_b) = run(), run()
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_model_checks_the_block_chain():
    net = build_model(GNNConfig(model="sage", in_dim=6, num_classes=3, num_layers=2))
    blocks = [make_block(*spec) for spec in CHAIN]
    with pytest.raises(ValueError, match="expected 2 blocks"):
        net(features(9, 6).float(), blocks)
    with pytest.raises(ValueError, match=r"blocks\[0\].num_dst = 7 must equal"):
        net(features(9, 6).float(), [blocks[0], blocks[2]])


@pytest.mark.parametrize(("field", "value", "message"), [
    ("model", "gin", "model must be one of"),
    ("in_dim", 0, "in_dim must be an int >= 1, got 0"),
    ("num_layers", 1.5, "num_layers must be an int >= 1"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\), got 1.0"),
    ("heads", 3, "hidden must be divisible by heads"),
])
def test_config_rejects_bad_values(field, value, message):
    kwargs = {"model": "gat", "in_dim": 6, "hidden": 8, "num_classes": 3, "heads": 2}
    kwargs[field] = value
    with pytest.raises(ValueError, match=message):
        GNNConfig(**kwargs)


def test_block_from_numpy_and_to():
    block = Block.from_numpy(np.array([3, 1], np.int32), np.array([0, 1]), 4, 2)
    assert block.src.dtype == torch.int64 and block.src.tolist() == [3, 1]
    moved = block.to("cpu")
    assert (moved.num_src, moved.num_dst, moved.num_edges) == (4, 2, 2)
    assert torch.equal(moved.dst, block.dst)


@pytest.mark.parametrize(("src", "dst", "num_src", "num_dst", "message"), [
    ([0, 4], [0, 1], 4, 2, r"edge_src\[1\] = 4 is out of range \[0, 4\)"),
    ([0, 1], [0, -1], 4, 2, r"edge_dst\[1\] = -1 is out of range"),
    ([0, 1], [0], 4, 2, "same length"),
    ([0], [0], 2, 3, "num_dst <= num_src"),
])
def test_block_from_numpy_rejects_bad_edges(src, dst, num_src, num_dst, message):
    with pytest.raises(ValueError, match=message):
        Block.from_numpy(np.array(src), np.array(dst), num_src, num_dst)


@pytest.mark.parametrize("in_dim,out_dim,dense", [(8, 1, True), (5, 3, False), (3, 5, False)])
def test_sage_either_projection_order_matches_dense(in_dim, out_dim, dense):
    """Projecting before aggregating is picked where it is cheaper (many edges into few src
    rows, narrow output); both orders give the dense result."""
    torch.manual_seed(0)
    conv = SAGEConv(in_dim, out_dim).double()
    edges = [(s, d) for s in range(3) for d in range(3)] if dense else EDGES
    block = make_block(edges, 3 if dense else 7, 3 if dense else 4)
    x = features(block.num_src, in_dim)
    d_in, d_out = in_dim, out_dim
    project_first = (block.num_src * d_in * d_out + block.num_edges * d_out
                     < block.num_edges * d_in + block.num_dst * d_in * d_out)
    assert project_first == dense
    with torch.no_grad():
        torch.testing.assert_close(conv(x, block), sage_dense(conv, x, block),
                                   rtol=1e-12, atol=1e-12)
