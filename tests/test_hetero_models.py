"""R-SAGE / R-GAT over typed blocks against PyG's ``HeteroConv`` of ``SAGEConv`` / ``GATConv``
with the same weights, and the typed block's and model's checks."""

import itertools

import numpy as np
import pytest
import torch

from disktrain.loader.block import HeteroBlock
from disktrain.models.hetero import HeteroGNN, HeteroGNNConfig

FEATURES = {"paper": 6, "author": 4, "field": 0}
NUM_NODES = {"paper": 30, "author": 20, "field": 9}
RELATIONS = [("paper", "cites", "paper"), ("author", "writes", "paper"),
             ("paper", "rev_writes", "author"), ("field", "topic_of", "paper"),
             ("paper", "rev_topic_of", "field")]
# Per type, input nodes of blocks[0], then of blocks[1], then the seeds (blocks[1]'s output).
SIZES = [{"paper": 11, "author": 8, "field": 5}, {"paper": 6, "author": 4, "field": 3},
         {"paper": 3}]


def config(**kw) -> HeteroGNNConfig:
    base = {"feature_dims": FEATURES, "num_nodes": NUM_NODES, "relations": RELATIONS,
            "target_type": "paper", "num_classes": 3, "hidden": 8, "heads": 2,
            "embedding_dim": 5, "dropout": 0.0}
    return HeteroGNNConfig(**{**base, **kw})


def batch(seed=0):
    """Two chained random blocks (every relation has edges; some dst nodes have none), the
    featured types' rows and the featureless type's ids."""
    rng = np.random.default_rng(seed)
    blocks = []
    for num_src, num_dst in itertools.pairwise(SIZES):
        edges = {}
        for s, rel, d in RELATIONS:
            if num_dst.get(d, 0):
                n = 2 * num_dst[d]
                edges[(s, rel, d)] = (rng.integers(0, num_src[s], n),
                                      rng.integers(0, max(num_dst[d] - 1, 1), n))
        blocks.append(HeteroBlock.from_numpy(edges, num_src, num_dst))
    x = {t: torch.randn(SIZES[0][t], dim) for t, dim in FEATURES.items() if dim}
    n_id = {"field": torch.from_numpy(rng.choice(NUM_NODES["field"], SIZES[0]["field"],
                                                 replace=False))}
    return x, blocks, n_id


def pyg_twin(model: HeteroGNN, cfg: HeteroGNNConfig):
    """PyG ``HeteroConv`` layers over every relation, holding ``model``'s weights where it has
    the relation's convolution."""
    nn = pytest.importorskip("torch_geometric.nn", reason="the bench extra (torch_geometric) "
                             "is not installed")
    layers, dims = [], {t: d or cfg.embedding_dim for t, d in FEATURES.items()}
    for i, ours in enumerate(model.layers):
        last = i == cfg.num_layers - 1
        out = cfg.num_classes if last else cfg.hidden
        convs = {}
        for s, rel, d in RELATIONS:
            if cfg.model == "rsage":
                conv = nn.SAGEConv((dims[s], dims[d]), out)
            else:
                conv = nn.GATConv((dims[s], dims[d]), out if last else out // cfg.heads,
                                  heads=cfg.heads, concat=not last, add_self_loops=False)
            if f"{s}__{rel}__{d}" in ours:
                copy_weights(ours[f"{s}__{rel}__{d}"], conv)
            convs[(s, rel, d)] = conv
        layers.append(nn.HeteroConv(convs, aggr=cfg.aggr))
        dims = dict.fromkeys(dims, cfg.hidden)
    return layers


def copy_weights(mine, conv) -> None:
    """Our relation convolution's weights into PyG's ``SAGEConv`` / ``GATConv``."""
    pairs = ([(conv.lin_l.weight, mine.lin_neigh.weight), (conv.lin_l.bias, mine.lin_neigh.bias),
              (conv.lin_r.weight, mine.lin_self.weight)] if hasattr(conv, "lin_l") else
             [(conv.lin_src.weight, mine.lin_src.weight), (conv.lin_dst.weight, mine.lin_dst.weight),
              (conv.att_src, mine.att_src.unsqueeze(0)), (conv.att_dst, mine.att_dst.unsqueeze(0)),
              (conv.bias, mine.bias)])
    with torch.no_grad():
        for theirs, ours in pairs:
            theirs.copy_(ours)


def pyg_forward(layers, model, x, blocks, n_id):
    """PyG's layers on each block's edges, outputs trimmed to the block's dst nodes."""
    h = {**x, "field": model.embeddings["field"](n_id["field"])}
    for i, (conv, block) in enumerate(zip(layers, blocks)):
        edge_index = {rel: torch.stack(e) for rel, e in block.edges.items()}
        h = {t: v[: block.num_dst.get(t, 0)] for t, v in conv(h, edge_index).items()}
        if i < len(layers) - 1:
            h = {t: v.relu() for t, v in h.items()}
    return h["paper"]


@pytest.mark.parametrize("model", ["rsage", "rgat"])
@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_logits_equal_pyg_heteroconv(model, aggr):
    torch.manual_seed(0)
    cfg = config(model=model, aggr=aggr)
    ours = HeteroGNN(cfg)
    x, blocks, n_id = batch()
    twin = pyg_twin(ours, cfg)
    logits = ours(x, blocks, n_id)
    assert logits.shape == (SIZES[-1]["paper"], cfg.num_classes)
    torch.testing.assert_close(logits, pyg_forward(twin, ours, x, blocks, n_id),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["rsage", "rgat"])
def test_gradient_reaches_every_parameter(model):
    torch.manual_seed(1)
    ours = HeteroGNN(config(model=model))
    x, blocks, n_id = batch(1)
    ours(x, blocks, n_id).square().sum().backward()
    # The last layer convolves only the relations into the target type (3 of 5).
    assert [len(layer) for layer in ours.layers] == [5, 3]
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_relation_missing_from_a_block_has_no_edges():
    torch.manual_seed(2)
    ours = HeteroGNN(config())
    x, blocks, n_id = batch(2)
    rel = ("paper", "cites", "paper")
    empty = torch.empty(0, dtype=torch.int64)
    without = HeteroBlock({r: e for r, e in blocks[1].edges.items() if r != rel},
                          blocks[1].num_src, blocks[1].num_dst)
    with_empty = HeteroBlock({**blocks[1].edges, rel: (empty, empty)},
                             blocks[1].num_src, blocks[1].num_dst)
    torch.testing.assert_close(ours(x, [blocks[0], without], n_id),
                               ours(x, [blocks[0], with_empty], n_id))


def test_forward_errors_name_the_type_or_relation():
    ours = HeteroGNN(config())
    x, blocks, n_id = batch()
    with pytest.raises(ValueError, match=r"x_dict\['author'\] must have shape \(8, 4\)"):
        ours({"paper": x["paper"]}, blocks, n_id)
    with pytest.raises(ValueError, match=r"'field' is featureless, so n_id_dict\['field'\]"):
        ours(x, blocks)
    with pytest.raises(ValueError, match="expected 2 blocks"):
        ours(x, blocks[:1], n_id)
    b0 = blocks[0]
    shrunk = HeteroBlock(b0.edges, b0.num_src, {**b0.num_dst, "author": 3})
    with pytest.raises(ValueError, match=r"blocks\[0\].num_dst\['author'\] = 3 must equal "
                                         r"blocks\[1\].num_src\['author'\] = 4"):
        ours(x, [shrunk, blocks[1]], n_id)
    stray = ("author", "cites", "author")
    empty = torch.empty(0, dtype=torch.int64)
    odd = HeteroBlock({**b0.edges, stray: (empty, empty)}, b0.num_src, b0.num_dst)
    with pytest.raises(ValueError, match=r"holds relation \('author', 'cites', 'author'\)"):
        ours(x, [odd, blocks[1]], n_id)


@pytest.mark.parametrize("change, match", [
    ({"model": "rgcn"}, r"HeteroGNNConfig.model must be one of"),
    ({"aggr": "max"}, r"HeteroGNNConfig.aggr must be one of"),
    ({"model": "rgat", "hidden": 7}, r"hidden must be divisible by heads"),
    ({"num_nodes": {"paper": 30, "author": 20}}, r"num_nodes must name the node types"),
    ({"feature_dims": {**FEATURES, "author": -1}}, r"feature_dims\['author'\] must be an int"),
    ({"relations": [*RELATIONS, ("paper", "in", "venue")]}, r"\('paper', 'in', 'venue'\) must"),
    ({"target_type": "venue"}, r"target_type 'venue' is not a node type"),
    ({"relations": RELATIONS[:2]}, (r"node type 'author' is the destination of no relation, "
                                    r"so layer 0 gives it no output, but relation \('author', "
                                    r"'writes', 'paper'\) reads it in layer 1")),
    ({"relations": RELATIONS[2:3]}, (r"'paper' is the destination of no relation, so layer 1 "
                                     r"gives it no output, but it is the target type")),
])
def test_config_errors_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        config(**change)


def test_one_layer_needs_no_reverse_relations():
    cfg = config(relations=RELATIONS[1:2], num_layers=1)
    assert cfg.layer_relations() == [[("author", "writes", "paper")]]
    ours = HeteroGNN(cfg)
    assert not ours.embeddings  # 'field' is read by no relation: no table
    block = HeteroBlock.from_numpy({RELATIONS[1]: (np.array([0, 1]), np.array([0, 0]))},
                                   {"paper": 2, "author": 2}, {"paper": 1})
    assert ours({"paper": torch.randn(2, 6), "author": torch.randn(2, 4)}, [block]).shape == \
        (1, 3)


def test_hetero_block_checks():
    rel = ("author", "writes", "paper")
    with pytest.raises(ValueError, match=r"relation \('author', 'writes', 'paper'\): edge_src"
                                         r"\[1\] = 2 is out of range \[0, 2\)"):
        HeteroBlock.from_numpy({rel: (np.array([0, 2]), np.array([0, 0]))},
                               {"author": 2, "paper": 1}, {"paper": 1})
    with pytest.raises(ValueError, match=r"edge_dst\[0\] = 1 is out of range \[0, 1\)"):
        HeteroBlock.from_numpy({rel: (np.array([0]), np.array([1]))},
                               {"author": 2, "paper": 3}, {"paper": 1})
    with pytest.raises(ValueError, match="same length"):
        HeteroBlock.from_numpy({rel: (np.array([0, 1]), np.array([0]))},
                               {"author": 2, "paper": 1}, {"paper": 1})
    with pytest.raises(ValueError, match=r"num_dst <= num_src for node type 'paper', got "
                                         r"num_dst=2, num_src=1"):
        HeteroBlock({}, {"paper": 1}, {"paper": 2})
    with pytest.raises(ValueError, match="src must be a 1-D int64 tensor"):
        HeteroBlock({rel: (torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int64))},
                    {"author": 1, "paper": 1}, {"paper": 1})
    block = HeteroBlock.from_numpy({rel: (np.array([1, 0], np.int32), np.array([0, 0]))},
                                   {"author": 2, "paper": 1}, {"paper": 1})
    moved = block.to("cpu")
    assert moved.edges[rel][0].dtype == torch.int64 and moved.num_dst == {"paper": 1}
