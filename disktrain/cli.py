"""The ``disktrain`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its options and
sets ``func``, the handler. Options are named after the fields of the component's config
dataclass (``dest`` = field name), and the handler builds the config with :func:`_config`,
so the CLI adds no settings of its own. Handlers import their module lazily to keep
``--help`` fast.

Users' errors (bad data, missing or existing files, invalid settings) print
``disktrain: error: <message>`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from disktrain.errors import DataError

USER_ERRORS = (DataError, FileNotFoundError, FileExistsError, ValueError)


def main(argv: list[str] | None = None) -> int:
    """Run ``disktrain`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        print(f"disktrain: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disktrain", description="Out-of-core GNN training: datasets on disk, "
        "offline sampling, packed features, pipelined reads.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_ingest, _add_synth, _add_info):
        add(subparsers)
    return parser


def _config(cls, args: argparse.Namespace):
    """Build the config dataclass ``cls`` from the parsed options named like its fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars")


# ingest

def _add_ingest(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="validate an edge list (+ features, labels, splits) into a dataset",
        description="Validate an edge list (Parquet file or directory, CSV, or an (E, 2) "
        ".npy) and optional features, labels and splits, and write a dataset directory "
        "(see docs/FORMAT.md). The CSR is over in-neighbors: row = dst, indices = src.")
    p.add_argument("--edges", type=Path, required=True, metavar="PATH",
                   help="edge list: .parquet file or directory, .csv/.tsv[.gz], or (E, 2) .npy")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="dataset directory to create")
    p.add_argument("--features", type=Path, metavar="F",
                   help="node features: (N, F) .npy of any numeric dtype, or Parquet "
                   "(numeric columns or one list column); stored float32 (float16 kept)")
    p.add_argument("--labels", type=Path, metavar="L.npy",
                   help="node labels: 1-D non-negative integer .npy of length N")
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}", type=Path, metavar="IDS.npy",
                       help=f"{split} node ids: 1-D integer .npy")
    p.add_argument("--src-col", dest="src_col", default="src",
                   help="source id column (Parquet/CSV; default: %(default)s)")
    p.add_argument("--dst-col", dest="dst_col", default="dst",
                   help="destination id column (Parquet/CSV; default: %(default)s)")
    p.add_argument("--undirected", action="store_true", help="add the reverse of every edge")
    p.add_argument("--dedup", action="store_true", help="keep one copy of repeated edges")
    p.add_argument("--drop-self-loops", dest="drop_self_loops", action="store_true",
                   help="drop edges (v, v)")
    p.add_argument("--num-nodes", dest="num_nodes", type=int, metavar="N",
                   help="node count (default: feature rows, else largest edge id + 1)")
    p.add_argument("--chunk-rows", dest="chunk_rows", type=int, default=1 << 20,
                   metavar="ROWS", help="edges read per chunk (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    _add_progress(p)
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from disktrain.ingest import IngestConfig, ingest

    out = ingest(_config(IngestConfig, args))
    _print_summary(out)
    return 0


# synth

def _add_synth(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="generate a synthetic dataset (R-MAT graph, planted classes)",
        description="Generate a synthetic dataset: an R-MAT graph with planted homophilous "
        "classes, noisy class-centroid features and train/val/test splits.")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="dataset directory to create")
    p.add_argument("--nodes", dest="num_nodes", type=int, required=True, metavar="N",
                   help="number of nodes")
    p.add_argument("--avg-degree", dest="avg_degree", type=float, default=10.0, metavar="D",
                   help="mean in-degree (default: %(default)s)")
    p.add_argument("--feature-dim", dest="feature_dim", type=int, default=128, metavar="F",
                   help="features per node (default: %(default)s)")
    p.add_argument("--classes", dest="num_classes", type=int, default=10, metavar="C",
                   help="number of classes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    _add_progress(p)
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from disktrain.synth import SynthConfig, synthesize

    out = synthesize(_config(SynthConfig, args))
    _print_summary(out)
    return 0


# info

def _add_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a dataset's attributes",
                              description="Print a dataset's attributes and arrays.")
    p.add_argument("path", type=Path, metavar="DIR", help="dataset directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_info)


def dataset_info(path: str | Path) -> dict:
    """Everything ``disktrain info`` reports about the dataset at ``path``."""
    from disktrain.dataset import Dataset

    return Dataset(path).info()


def _run_info(args: argparse.Namespace) -> int:
    info = dataset_info(args.path)
    if args.json:
        print(json.dumps(info))
    else:
        _print_tree(info)
    return 0


def _print_tree(value: dict, indent: int = 0) -> None:
    for key, item in value.items():
        if isinstance(item, dict):
            print(f"{' ' * indent}{key}:")
            _print_tree(item, indent + 2)
        else:
            print(f"{' ' * indent}{key}: {item}")


def _print_summary(path: Path) -> None:
    info = dataset_info(path)
    print(f"wrote {path}: {info['num_nodes']} nodes, {info['num_edges']} edges, "
          f"{info['feature_dim']} features ({info['feature_dtype']}), "
          f"{info['num_classes']} classes")
