"""The ``disktrain`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its options and
sets ``func``, the handler. Options are named after the fields of the component's config
dataclass (``dest`` = field name), and the handler builds the config with :func:`_config`,
so the CLI adds no settings of its own. Handlers import their module lazily to keep
``--help`` fast.

Users' errors (bad data, missing or existing files, invalid settings, a run stopped on a
non-finite loss) print ``disktrain: error: <message>`` and exit with status 2, without a
traceback. They are the classes in USER_ERRORS; a config's validation ``ValueError`` becomes
a ConfigError in :func:`_config`. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from disktrain.errors import ConfigError, DataError, NonFiniteError

USER_ERRORS = (DataError, ConfigError, NonFiniteError, FileNotFoundError, FileExistsError)


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
    for add in (_add_ingest, _add_synth, _add_info, _add_verify, _add_prepare, _add_train,
                _add_demo):
        add(subparsers)
    return parser


def _config(cls, args: argparse.Namespace | None = None, **values):
    """Build the config dataclass ``cls`` from the parsed options named like its fields (and
    ``values``); its validation errors are the user's (ConfigError)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args or argparse.Namespace()).items() if k in names}
    try:
        return cls(**given, **values)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"`` or a plain byte count -> bytes (binary units)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 512M, 2G)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"byte size must be >= 0, got {text!r}")
    return int(value * units[unit])


def parse_fanouts(text: str) -> tuple[int, ...]:
    """``"15,10,5"`` -> (15, 10, 5)."""
    try:
        return tuple(int(f) for f in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"fanouts must be comma-separated integers like 15,10,5, got {text!r}") from None


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars")


# ingest

def _add_ingest(subparsers) -> None:
    p = subparsers.add_parser(
        "ingest", help="validate an edge list (+ features, labels, splits) or an OGB "
        "dataset into a dataset",
        description="Validate an edge list (Parquet file or directory, CSV, or an (E, 2) "
        ".npy) and optional features, labels and splits, or an OGB node property prediction "
        "dataset (--ogb), and write a dataset directory (see docs/FORMAT.md). The CSR is over "
        "in-neighbors: row = dst, indices = src.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--edges", type=Path, metavar="PATH",
                        help="edge list: .parquet file or directory, .csv/.tsv[.gz], or "
                        "(E, 2) .npy")
    source.add_argument("--ogb", type=Path, metavar="DIR",
                        help="instead of --edges and the files below: an OGB node property "
                        "prediction dataset directory (raw/edge.csv.gz, raw/node-feat.csv.gz, "
                        "raw/node-label.csv.gz, split/NAME/...), streamed; ogbn-products "
                        "needs --undirected, as OGB adds the reverse edges")
    p.add_argument("--ogb-split", dest="ogb_split", metavar="NAME",
                   help="with --ogb: which split/NAME to use (default: the only one)")
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
    for split, default in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        p.add_argument(f"--{split}-fraction", dest=f"{split}_fraction", type=float,
                       default=default, metavar="P",
                       help=f"share of the nodes in the {split} split (default: %(default)s)")
    p.add_argument("--feature-dtype", dest="feature_dtype", choices=("float32", "float16"),
                   default="float32", help="stored feature type (default: %(default)s)")
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
    """Everything ``disktrain info`` reports: the dataset, its sample and packed stores."""
    from disktrain.dataset import Dataset
    from disktrain.pack import PackedStore
    from disktrain.sample import SampleStore

    info = Dataset(path).info()
    for name, store in (("samples", SampleStore), ("packed", PackedStore)):
        if (Path(path) / name / "zarr.json").exists():
            info[name] = store(path).info()
    return info


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


# verify

def _add_verify(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check every stored byte of a dataset and its prepared stores",
        description="Check every chunk file of every array of a dataset and of its sample "
        "and packed stores (present, full size, crc32c), and that the stores were made from "
        "this dataset and from each other. Names each bad array, chunk file and batch, and "
        "the step to rerun. Exit status 0: clean; 1: damage found; 2: not a dataset.")
    p.add_argument("path", type=Path, metavar="DIR", help="dataset directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_progress(p)
    p.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from disktrain.verify import verify

    report = verify(args.path, progress=args.progress)
    print(json.dumps(report.to_dict()) if args.json else "\n".join(report.lines()))
    return 0 if report.clean else 1


# prepare

def _add_prepare(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="pre-sample every batch and pack its features",
        description="Offline neighbor sampling of every mini-batch of every epoch "
        "(DATASET/samples), then tiering and packing of the features each batch reads "
        "(DATASET/packed). Resumes an interrupted run with the same settings.")
    p.add_argument("dataset", type=Path, metavar="DATASET", help="dataset directory")
    p.add_argument("--fanouts", type=parse_fanouts, default=(15, 10, 5), metavar="F1,F2,..",
                   help="neighbors per hop from the seeds; -1 = all; write --fanouts=-1,-1 when the "
                   "list starts with -1 (default: 15,10,5)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1024,
                   help="seeds per batch (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs of batches to pre-sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--group-size", dest="group_size", type=int, default=16,
                   help="batches per sampling task (default: %(default)s)")
    p.add_argument("--gpu-cache-bytes", dest="gpu_cache_bytes", type=parse_bytes, default=0,
                   metavar="BYTES", help="GPU cache for the hottest rows, e.g. 2G (default: 0)")
    p.add_argument("--cpu-cache-bytes", dest="cpu_cache_bytes", type=parse_bytes, default=0,
                   metavar="BYTES", help="CPU cache for the next hottest rows (default: 0)")
    p.add_argument("--max-packed-bytes", dest="max_packed_bytes", type=parse_bytes,
                   metavar="BYTES", help="refuse to pack more than this; says what would fit")
    p.add_argument("--chunk-bytes", dest="chunk_bytes", type=parse_bytes, default=256 << 10,
                   metavar="BYTES", help="bytes per packed chunk file (default: 256K)")
    p.add_argument("--eval", dest="evaluation", action=argparse.BooleanOptionalAction,
                   default=True, help="also sample the val and test seeds once and pack their "
                   "rows (DATASET/eval/), so training evaluates on the packed path "
                   "(default: yes)")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, metavar="N",
                   help="seeds per evaluation batch (default: --batch-size)")
    p.add_argument("--ray-address", dest="ray_address", metavar="ADDR",
                   help="run sampling and packing groups as Ray tasks on this cluster "
                   "('auto' inside a Ray job)")
    _add_progress(p)
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from disktrain.pack import PackConfig, pack_dataset
    from disktrain.prepare import prepare_eval
    from disktrain.sample import SampleConfig, SampleStore, sample_dataset

    sample_cfg, pack_cfg = _config(SampleConfig, args), _config(PackConfig, args)
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise ConfigError(f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")
    if args.ray_address:
        from disktrain.cluster.ray_prepare import prepare_on_ray

        packed, evaluation = prepare_on_ray(args.dataset, sample_cfg, pack_cfg,
                                            args.ray_address, progress=args.progress,
                                            evaluation=args.evaluation,
                                            eval_batch_size=args.eval_batch_size)
    else:
        sample_dataset(args.dataset, sample_cfg, progress=args.progress)
        packed = pack_dataset(args.dataset, pack_cfg, progress=args.progress)
        evaluation = (prepare_eval(args.dataset, args.eval_batch_size, args.progress)
                      if args.evaluation else {})
    # the stores just made (opening the packed store again would re-check all of `slots`)
    print(json.dumps({"samples": SampleStore(args.dataset).info(), "packed": packed.info(),
                      "eval": {split: store.info() for split, store in evaluation.items()}}))
    return 0


# train

def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a GNN on a prepared dataset",
        description="Train on the pre-sampled, packed batches of a prepared dataset through "
        "the staged read -> assemble -> copy -> compute pipeline. Runs alone, under torchrun "
        "(RANK/LOCAL_RANK/WORLD_SIZE), or on Ray Train with --workers. The last line of "
        "standard output is one JSON object (epochs, val_acc, test_acc, epoch_time_s, ...).")
    p.add_argument("dataset", type=str, metavar="DATASET", help="prepared dataset directory")
    p.add_argument("--model", default="sage", choices=("sage", "gcn", "gat", "mlp"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4, help="attention heads (gat)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--input-dropout", dest="input_dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=5e-4)
    p.add_argument("--plan-reuse", dest="plan_reuse", choices=("fresh", "cycle", "pool"),
                   default="fresh", help="epochs beyond the E pre-sampled ones. fresh: each "
                   "is sampled and packed in the background while the one before trains; "
                   "cycle: epoch e reuses pre-sampled epoch e mod E; pool: each epoch draws "
                   "from every pre-sampled batch (default: %(default)s)")
    p.add_argument("--prepare-ahead", dest="prepare_ahead", type=int, default=1, metavar="K",
                   help="with --plan-reuse fresh: epochs prepared ahead of the one training, "
                   "each on disk until trained (default: %(default)s)")
    p.add_argument("--eval", dest="evaluation", choices=("auto", "packed", "online"),
                   default="auto", help="packed: val/test batches as `prepare` packed them; "
                   "online: sampled now, features read from the raw array; auto: packed "
                   "where prepared (default: %(default)s)")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=1)
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=4096,
                   help="seeds per batch of online evaluation (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda (this worker's GPU), cuda:N")
    p.add_argument("--prefetch", type=int, default=2, help="batches in flight per stage")
    p.add_argument("--read-threads", dest="read_threads", type=int, default=2)
    p.add_argument("--compute-threads", dest="compute_threads", type=int, default=0,
                   help="torch threads for compute (default 0: on a CPU every core, but one "
                   "while fresh epochs are prepared in the background)")
    p.add_argument("--aggregator", default="mean",
                   choices=("mean", "median", "trimmed-mean", "krum", "multi-krum", "geomed",
                            "flag"),
                   help="how workers' gradients combine: mean, or a Byzantine-robust rule")
    p.add_argument("--byzantine-f", dest="byzantine_f", type=int, default=0,
                   help="faulty workers the robust rule tolerates")
    p.add_argument("--flag-subspace", dest="flag_subspace", type=int, default=0,
                   help="the flag aggregator's subspace dimension (default: the workers)")
    p.add_argument("--checkpoint-dir", dest="checkpoint_dir",
                   help="default: DATASET/checkpoints")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=0,
                   help="also checkpoint every N batches (default: epoch ends only)")
    p.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int, default=2,
                   metavar="K", help="checkpoint files kept, newest first (default: "
                   "%(default)s, the newest and one to fall back on)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint that loads")
    p.add_argument("--on-nonfinite", dest="on_nonfinite", choices=("stop", "skip"),
                   default="stop", help="a step with a non-finite loss or gradient: stop with "
                   "an error (default) or skip it (no update; counted as skipped_steps)")
    p.add_argument("--metrics", help="append one JSON record per epoch to this file")
    p.add_argument("--max-batches", dest="max_batches", type=int,
                   help="at most this many batches per epoch")
    p.add_argument("--workers", type=int, default=1,
                   help="train on Ray Train with this many workers (default: 1, this process)")
    p.add_argument("--gpus-per-worker", dest="gpus_per_worker", type=float, default=0)
    p.add_argument("--ray-address", dest="ray_address",
                   help="Ray cluster to use with --workers (default: start a local one)")
    _add_progress(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from disktrain.cluster.ray_train import RayTrainConfig, fit_on_ray
    from disktrain.train import TrainConfig, train

    cfg = _config(TrainConfig, args)
    ray_cfg = _config(RayTrainConfig, workers=args.workers,
                      gpus_per_worker=args.gpus_per_worker, address=args.ray_address)
    if ray_cfg.workers > 1 or ray_cfg.address:
        cfg.check_world_size(ray_cfg.workers)
        if cfg.device.startswith("cuda") and not ray_cfg.gpus_per_worker:
            raise ConfigError(f"device {cfg.device!r} with --workers needs --gpus-per-worker "
                              "> 0 (Ray gives each worker its GPU)")
        result = fit_on_ray(cfg, ray_cfg)
    else:
        result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0


# demo

def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole path on a small built-in synthetic graph",
        description="Generate a small synthetic graph, prepare it (offline sampling and "
        "packing) and train GraphSAGE and a features-only MLP on it; report both.")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="keep the dataset here (default: a temporary directory, deleted)")
    p.add_argument("--nodes", dest="num_nodes", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=3)
    _add_progress(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from disktrain.demo import DemoConfig, run_demo

    print(json.dumps(run_demo(_config(DemoConfig, args))))
    return 0
