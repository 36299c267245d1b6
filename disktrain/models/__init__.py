"""GNN layers and node classifiers over sampled blocks (plain PyTorch ops).

``Block`` is one message-flow layer; ``build_model(GNNConfig(...))``, or
``build_model(ModelConfig(...).sized(in_dim=.., num_classes=.., num_layers=..))``, gives a
module called as ``model(x, blocks)`` that returns logits for ``blocks[-1]``'s dst nodes (the
seeds).
"""

from disktrain.loader.block import Block
from disktrain.models.gat import GATConv
from disktrain.models.gcn import GCNConv
from disktrain.models.gnn import GNN, MLP, MODELS, GNNConfig, ModelConfig, build_model
from disktrain.models.sage import SAGEConv

__all__ = [
    "GNN",
    "MLP",
    "MODELS",
    "Block",
    "GATConv",
    "GCNConv",
    "GNNConfig",
    "ModelConfig",
    "SAGEConv",
    "build_model",
]
