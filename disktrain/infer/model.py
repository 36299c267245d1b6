"""The trained model of a checkpoint, rebuilt from its record and checked against the dataset
it is to run on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from disktrain.errors import CheckpointError
from disktrain.models.gnn import MODELS, GNNConfig, build_model
from disktrain.models.hetero import HETERO_MODELS, HeteroGNN, HeteroGNNConfig
from disktrain.models.link import LinkModel, build_decoder
from disktrain.storage.chunkfile import crc32c
from disktrain.storage.dataset import Dataset, TypedDataset
from disktrain.train.checkpoint import load_bytes, read_newest

HOMOGENEOUS = MODELS[:4]
"""The models inference runs: sage, gcn, gat, mlp."""


@dataclass(frozen=True)
class Trained:
    """A trained model in eval mode, its sized config and where it came from."""

    model: torch.nn.Module
    config: GNNConfig | HeteroGNNConfig
    path: Path
    """The checkpoint file."""
    fingerprint: str
    """crc32c and size of the checkpoint's bytes: layer stores made with another model are
    not resumed from."""
    decoder: torch.nn.Module | None = None
    """A link prediction model's decoder (``model`` is then its encoder); None: a node
    classifier."""


def checkpoint_bytes(checkpoint: str | Path) -> tuple[Path, bytes]:
    """The bytes of checkpoint file ``checkpoint``, or of the newest good file of checkpoint
    directory ``checkpoint``."""
    path = Path(checkpoint)
    if path.is_dir():
        found = read_newest(path)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint file (ckpt-e*-b*.pt) in the directory")
        return found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path, path.read_bytes()


def load_trained(checkpoint: str | Path, dataset: Dataset) -> Trained:
    """The model checkpoint ``checkpoint`` holds, to run on ``dataset``; CheckpointError
    naming both sides when it was trained on another dataset (id, feature width, classes), or
    its weights do not fit its record; refused for a checkpoint without a record (written
    before checkpoints said what model they hold) and for a model of the other kind of graph
    (typed or not)."""
    path, data = checkpoint_bytes(checkpoint)
    state = load_bytes(data, path)
    record = state.get("model_record")
    if not isinstance(record, dict) or "model" not in state:
        raise CheckpointError(f"{path}: the checkpoint does not say which model it holds "
                              "(written by an older disktrain, without a model record); "
                              "retrain with this disktrain to run inference")
    fields, trained_on = record["model"], record.get("dataset", {})
    typed = isinstance(dataset, TypedDataset)
    if fields.get("model") not in (HETERO_MODELS if typed else HOMOGENEOUS):
        raise CheckpointError(f"{path}: model {fields.get('model')!r} does not run on "
                              f"{dataset.path} ({'typed' if typed else 'one node type'}; "
                              f"models: {', '.join(HETERO_MODELS if typed else HOMOGENEOUS)})")
    _check_dataset(path, trained_on, dataset)
    if typed:
        config = HeteroGNNConfig(**{**fields, "relations": [tuple(r) for r in
                                                            fields["relations"]]})
        model = HeteroGNN(config)
    else:
        config = GNNConfig(**fields)
        model = build_model(config)
    link = record.get("task") == "link"
    if link:  # an encoder and a decoder (disktrain.models.link)
        model = LinkModel(model, build_decoder(config.decoder, config.num_classes))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the model its record names "
                              f"({fields}): {e}") from e
    fingerprint = f"{crc32c(data):08x}-{len(data)}"
    if link:
        return Trained(model.encoder.eval(), config, path, fingerprint, model.decoder.eval())
    return Trained(model.eval(), config, path, fingerprint)


def _check_dataset(path: Path, trained_on: dict, dataset: Dataset) -> None:
    """CheckpointError naming both sides where ``dataset`` differs from the one the
    checkpoint's model was trained on."""
    meta = dataset.meta
    for key in ("dataset_id", "feature_dim", "num_classes"):
        if trained_on.get(key) != getattr(meta, key):
            raise CheckpointError(
                f"{path}: trained on dataset {trained_on.get('path')!r} with {key} "
                f"{trained_on.get(key)!r}, but {dataset.path} has {key} "
                f"{getattr(meta, key)!r}: run it on the dataset it was trained on")
