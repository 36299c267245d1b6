"""The ``disktrain`` command line.

Each subcommand is one ``_<name>_options(parser)`` function, registered with its help texts
by :func:`_command`, that declares its options and sets ``func``, its handler. Each option of
a command that builds configs is a field of a config dataclass, declared with
:func:`_option`: its ``dest`` is the field's path (``"model.hidden"``: field ``hidden`` of
TrainConfig's ``model`` component) and its default is the field's own, so each default and
each list of choices is defined once, next to the code it configures. ``configs(args)``
gives the configs the handler builds (:func:`_config`), keyed by the dest prefix of their
options. Option declarations import the config modules (and torch), so :func:`main` declares
only the options of the subcommand it runs: ``disktrain --help`` and ``disktrain info`` stay
fast.

Users' errors (bad data, missing or existing files, invalid settings, a run stopped on a
non-finite loss) print ``disktrain: error: <message>`` and exit with status 2, without a
traceback. They are the classes in USER_ERRORS; a config's validation ``ValueError`` becomes
a ConfigError in :func:`_config`; a training run whose replicas diverged
(disktrain.robust.ReplicaDivergenceError) is one too. Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from disktrain.errors import ConfigError, DataError, NonFiniteError

USER_ERRORS = (DataError, ConfigError, NonFiniteError, FileNotFoundError, FileExistsError)


def main(argv: list[str] | None = None) -> int:
    """Run ``disktrain`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args) or 0
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"disktrain: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_errors() -> tuple[type[Exception], ...]:
    """USER_ERRORS, and ReplicaDivergenceError once its module (which imports torch) is
    loaded: an error a module not loaded cannot have been raised."""
    digest = sys.modules.get("disktrain.robust.digest")
    return USER_ERRORS if digest is None else (*USER_ERRORS, digest.ReplicaDivergenceError)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``disktrain`` parser; with ``command``, only that subcommand declares its options
    (the others parse nothing beyond ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="disktrain", description="Out-of-core GNN training: datasets on disk, "
        "offline sampling, packed features, pipelined reads.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (texts, options) in _COMMANDS.items():
        sub = subparsers.add_parser(name, **texts)
        if command in (None, name):
            options(sub)
    return parser


_COMMANDS: dict[str, tuple[dict[str, str], Callable[[argparse.ArgumentParser], None]]] = {}
"""Subcommand -> (its ``help`` and ``description``, the function declaring its options), in
help order."""


def _command(name: str, **texts: str):
    """Register the decorated function as the one declaring the options of subcommand
    ``name``, whose ``help`` and ``description`` are ``texts``."""
    def register(options):
        _COMMANDS[name] = (texts, options)
        return options
    return register


def _field_default(cls, name: str):
    """The default of field ``name`` of the dataclass ``cls`` (dataclasses.MISSING if none)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise AttributeError(f"{cls.__name__} has no field {name!r}")
    f = fields[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _default(cls, path: str):
    """The default of the field at ``path`` of config ``cls``: ``"model.hidden"`` is field
    ``hidden`` of the config that ``cls``'s field ``model`` holds by default."""
    *outer, name = path.split(".")
    for part in outer:
        cls = type(_field_default(cls, part))
    return _field_default(cls, name)


def _option(parser, flags: str | tuple[str, ...], cls, path: str, prefix: str = "",
            **kw) -> None:
    """Declare option ``flags`` for the field at ``path`` of config ``cls`` (see
    :func:`_default`), with dest ``prefix + path`` and the field's default; ``prefix`` tells
    a command's configs apart (``"ray."``)."""
    flags = (flags,) if isinstance(flags, str) else flags
    if not kw.get("required"):
        default = _default(cls, path)
        kw.setdefault("default", None if default is dataclasses.MISSING else default)
    if "metavar" not in kw and "choices" not in kw and "action" not in kw:
        kw["metavar"] = flags[-1].lstrip("-").upper().replace("-", "_")
    parser.add_argument(*flags, dest=prefix + path, **kw)


def _build(cls, values: dict, prefix: str = ""):
    """``cls`` from the ``values`` whose keys are ``prefix`` + the path of one of its fields;
    its fields without a value keep their defaults."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in values:
            kwargs[f.name] = values[key]
        elif any(k.startswith(key + ".") for k in values):
            kwargs[f.name] = _build(type(_field_default(cls, f.name)), values, key + ".")
    return cls(**kwargs)


def _config(cls, args: argparse.Namespace, prefix: str = ""):
    """Build the config dataclass ``cls`` from the parsed options whose dest is ``prefix``
    + the path of one of its fields (a component from its fields' options); its validation
    errors are the user's (ConfigError)."""
    try:
        return _build(cls, vars(args), prefix)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _configs_of(classes: dict[str, type]) -> Callable[[argparse.Namespace], dict]:
    """The ``configs`` of a command whose options build ``classes`` (dest prefix -> config
    dataclass)."""
    return lambda args: {prefix: _config(cls, args, prefix) for prefix, cls in classes.items()}


def configs(args: argparse.Namespace) -> dict[str, object]:
    """The config dataclasses the parsed command line ``args`` builds, keyed by the dest
    prefix of their options ("" for the command's main one); {} for a command without."""
    build = getattr(args, "configs", None)
    return build(args) if build is not None else {}


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"`` or a plain byte count -> bytes (binary units)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r} (e.g. 512M, 2G)")
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


def parse_relation_fanouts(text: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``"cites=10,5;written_by=5,0"`` -> (("cites", (10, 5)), ("written_by", (5, 0)))."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, fanouts = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(
                f"relation fanouts must read REL=F1,F2;REL=..., got {part!r}")
        pairs.append((name.strip(), parse_fanouts(fanouts)))
    return tuple(pairs)


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.85,0.05,0.10"`` -> (0.85, 0.05, 0.1)."""
    try:
        return tuple(float(f) for f in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions like 0.85,0.05,0.10, got {text!r}") from None


def parse_names(text: str) -> tuple[str, ...]:
    """``"nnm,clip"`` -> ("nnm", "clip"); ``""`` -> ()."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_ranks(text: str) -> tuple[int, ...]:
    """``"0,3"`` -> (0, 3)."""
    try:
        return tuple(int(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"ranks must be comma-separated integers like 0,3, got {text!r}") from None


def parse_param(text: str) -> tuple[str, float]:
    """``"eps=4"`` -> ("eps", 4.0)."""
    name, sep, value = text.partition("=")
    try:
        if not (sep and name.strip()):
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"an attack parameter must be NAME=NUMBER like eps=4, got {text!r}") from None


class _ParamsAction(argparse.Action):
    """A repeatable NAME=NUMBER option collected into one dict (a copy of the default)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        name, value = values
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), name: value})


def format_bytes(n: int) -> str:
    """A byte count the way :func:`parse_bytes` reads it: 262144 -> "256K"."""
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _add_progress(parser: argparse.ArgumentParser, cls=None) -> None:
    """``--no-progress``: the field ``progress`` of ``cls``, or a plain flag without one."""
    if cls is None:
        parser.add_argument("--no-progress", dest="progress", action="store_false",
                            help="hide progress bars")
    else:
        _option(parser, "--no-progress", cls, "progress", action="store_false",
                help="hide progress bars")


# ingest

@_command("ingest", help="validate an edge list (+ features, labels, splits), or an OGB, IGB "
          "or MAG240M dataset, into a dataset",
          description="Validate an edge list (Parquet file or directory, CSV, or an (E, 2) "
          ".npy) and optional features, labels and splits, or a dataset in its published "
          "layout (--ogb: OGB's node property prediction CSVs or binary data.npz, or a "
          "heterogeneous one as ogbn-mag; --igb: IGB / IGBH; --mag240m), and write a dataset "
          "directory (see docs/FORMAT.md). The CSR is over in-neighbors: row = dst, indices = "
          "src; a typed dataset has one per relation.")
def _ingest_options(p: argparse.ArgumentParser) -> None:
    from disktrain.ingest.inputs import IngestConfig as C
    from disktrain.ingest.typed_importers import IGB_LABEL_FILES, IGB_SIZES
    from disktrain.ingest.typed_importers import TypedIngestConfig as T

    p.set_defaults(func=_run_ingest, configs=_ingest_configs)
    source = p.add_mutually_exclusive_group(required=True)
    _option(source, "--edges", C, "edges", type=Path, metavar="PATH",
            help="edge list: .parquet file or directory, .csv/.tsv[.gz], or (E, 2) .npy")
    _option(source, "--ogb", C, "ogb", type=Path, metavar="DIR",
            help="instead of --edges and the files below: an OGB node property prediction "
            "dataset directory (raw/edge.csv.gz, raw/node-feat.csv.gz, raw/node-label.csv.gz, "
            "split/NAME/...; or raw/data.npz + raw/node-label.npz, as ogbn-papers100M; or "
            "raw/relations/, a typed graph as ogbn-mag), streamed; ogbn-products needs "
            "--undirected, as OGB adds the reverse edges")
    _option(source, "--igb", T, "igb", prefix="typed.", type=Path, metavar="DIR",
            help="an IGB / IGBH download: DIR/SIZE/processed/TYPE/node_feat.npy, "
            "SRC__REL__DST/edge_index.npy (typed; IGB's homogeneous graph: paper and "
            "paper__cites__paper only)")
    _option(source, "--mag240m", T, "mag240m", prefix="typed.", type=Path, metavar="DIR",
            help="MAG240M (mag240m_kddcup2021: meta.pt, split_dict.pt, processed/), typed")
    _option(p, "--ogb-split", C, "ogb_split", metavar="NAME",
            help="with --ogb: which split/NAME to use (default: the only one)")
    _option(p, "--igb-size", T, "igb_size", prefix="typed.", choices=IGB_SIZES,
            help="with --igb: which DIR/SIZE (default: the only one)")
    _option(p, "--igb-classes", T, "igb_classes", prefix="typed.", type=int,
            choices=tuple(IGB_LABEL_FILES), help="with --igb: 19 (node_label_19.npy) or 2983 "
            "(node_label_2K.npy) classes (default: %(default)s)")
    _option(p, "--igb-feature-dim", T, "igb_feature_dim", prefix="typed.", type=int,
            metavar="DIM", help="with --igb: the row width of a node_feat.npy without a .npy "
            "header (large, full; default: %(default)s)")
    _option(p, "--igb-labelled", T, "igb_labelled", prefix="typed.", type=int, metavar="N",
            help="with --igb: the papers with a label, a prefix (default: IGB's counts for "
            "full, 227,130,858 or 157,675,969; else every paper)")
    _option(p, "--add-reverse", T, "add_reverse", prefix="typed.",
            action=argparse.BooleanOptionalAction, help="with --igb, --mag240m or a typed "
            "--ogb: add the relation (DST, rev_REL, SRC) for each (SRC, REL, DST), so that "
            "every type receives messages (default: on)")
    _option(p, "--out", C, "out", type=_location, required=True, metavar="DIR",
            help="dataset directory to create, or an object-store URL (s3://bucket/prefix: "
            "written on this node, then published there)")
    _option(p, "--features", C, "features", type=Path, metavar="F",
            help="node features: (N, F) .npy of any numeric dtype, or Parquet (numeric "
            "columns or one list column); stored float32 (float16 kept)")
    _option(p, "--labels", C, "labels", type=Path, metavar="L.npy",
            help="node labels: 1-D non-negative integer .npy of length N")
    for split in ("train", "val", "test"):
        _option(p, f"--{split}", C, split, type=Path, metavar="IDS.npy",
                help=f"{split} node ids: 1-D integer .npy")
    _option(p, "--src-col", C, "src_col", help="source id column (Parquet/CSV; default: "
            "%(default)s)")
    _option(p, "--dst-col", C, "dst_col", help="destination id column (Parquet/CSV; "
            "default: %(default)s)")
    _option(p, "--undirected", C, "undirected", action="store_true",
            help="add the reverse of every edge")
    _option(p, "--dedup", C, "dedup", action="store_true",
            help="keep one copy of repeated edges")
    _option(p, "--drop-self-loops", C, "drop_self_loops", action="store_true",
            help="drop edges (v, v)")
    _option(p, "--num-nodes", C, "num_nodes", type=int, metavar="N",
            help="node count (default: feature rows, else largest edge id + 1)")
    _option(p, "--chunk-rows", C, "chunk_rows", type=int, metavar="ROWS",
            help="edges read per chunk (default: %(default)s)")
    _link_options(p, C)
    for split in ("val", "test"):
        _option(p, f"--link-{split}", C, f"link.link_{split}", type=Path, metavar="FILE",
                help=f"instead of --edge-split: the {split} edges, an (E, 2) integer .npy or "
                "Parquet with the src/dst columns, each an edge of the graph; removed from it "
                "(both directions)")
        _option(p, f"--link-{split}-neg", C, f"link.link_{split}_neg", type=Path,
                metavar="FILE", help=f"with --link-{split}: the negative destinations of each "
                f"{split} edge, an (E, K) integer .npy (default: drawn)")
    _option(p, "--overwrite", C, "overwrite", action="store_true",
            help="replace DIR if it exists")
    _add_progress(p, C)


def _link_options(p: argparse.ArgumentParser, cls) -> None:
    """The edge split options of ingest and synth (their configs' ``link`` field)."""
    _option(p, "--edge-split", cls, "link.edge_split", type=parse_fractions,
            metavar="TRAIN,VAL,TEST", help="split the edges for link prediction, e.g. "
            "0.85,0.05,0.10 (shares, approximate: a hash of each edge picks its split, both "
            "directions alike); val and test edges are left out of the graph")
    _option(p, "--split-seed", cls, "link.split_seed", type=int, metavar="S",
            help="seed of the edge split and of the negatives drawn (default: %(default)s)")
    _option(p, "--eval-negatives", cls, "link.eval_negatives", type=int, metavar="K",
            help="negative destinations drawn per val/test edge, uniform over the nodes "
            "(default: %(default)s)")


_INGEST_SHARED = ("out", "ogb", "ogb_split", "dedup", "overwrite", "progress", "chunk_rows")
"""IngestConfig's fields that TypedIngestConfig has too (one option each)."""
_LINK = ("link.edge_split", "link.split_seed", "link.eval_negatives")
"""The edge split options (ingest and synth of a homogeneous graph only)."""
_INGEST_ONLY = {"": ("features", "labels", "train", "val", "test", "src_col", "dst_col",
                     "undirected", "drop_self_loops", "num_nodes", *_LINK, "link.link_val",
                     "link.link_test", "link.link_val_neg", "link.link_test_neg"),
                "typed.": ("igb_size", "igb_classes", "igb_feature_dim", "igb_labelled",
                           "add_reverse")}
"""The fields of each of ingest's configs that the other lacks, by dest prefix."""


def _ingest_configs(args: argparse.Namespace) -> dict:
    """``{"": IngestConfig}``, or ``{"typed.": TypedIngestConfig}`` for --igb, --mag240m or a
    typed --ogb; the options of the other config refused."""
    from disktrain.ingest.inputs import IngestConfig
    from disktrain.ingest.typed_importers import TypedIngestConfig, is_typed_ogb

    values = vars(args)
    typed = bool(values["typed.igb"] or values["typed.mag240m"]
                 or (values["ogb"] is not None and is_typed_ogb(values["ogb"])))
    kinds = [("", IngestConfig), ("typed.", TypedIngestConfig)]
    (prefix, cls), (other, other_cls) = kinds[::-1] if typed else kinds
    if given := [f"--{name.rsplit('.')[-1].replace('_', '-')}" for name in _INGEST_ONLY[other]
                 if values[other + name] != _default(other_cls, name)]:
        raise ConfigError(f"{', '.join(given)} apply only " + (
            "to an edge list or a homogeneous OGB dataset" if typed else
            "with --igb, --mag240m or a typed --ogb (one with raw/relations/)"))
    if typed:
        args = argparse.Namespace(**values, **{f"typed.{k}": values[k] for k in _INGEST_SHARED})
    return {prefix: _config(cls, args, prefix)}


def _run_ingest(args: argparse.Namespace) -> None:
    from disktrain.ingest import ingest
    from disktrain.ingest.typed_importers import ingest_typed

    cfg = configs(args)
    if "typed." in cfg:
        _print_summary(_published(cfg["typed."], ingest_typed))
    else:
        _print_summary(_published(cfg[""], ingest))


# synth

_SYNTH_ONLY = {"num_nodes": "--nodes", "avg_degree": "--avg-degree",
               **{dest: f"--{dest[5:].replace('_', '-')}" for dest in _LINK}}
"""Options of the homogeneous graph alone (dest -> flag)."""
_TYPED_ONLY = {"num_papers": "--papers", **{f"{rel}_degree": f"--{rel.replace('_', '-')}-degree"
                                            for rel in ("cites", "written_by", "affiliated_to",
                                                        "topic")}}
"""Options of the typed graph (``--typed``) alone (dest -> flag)."""


@_command("synth", help="generate a synthetic dataset (R-MAT graph, planted classes)",
          description="Generate a synthetic dataset: an R-MAT graph with planted homophilous "
          "classes, noisy class-centroid features and train/val/test splits; with --typed "
          "igbh, an IGBH-like typed graph instead (papers, authors, institutes, fields of "
          "study and their relations, every type with features, classes on the papers).")
def _synth_options(p: argparse.ArgumentParser) -> None:
    from disktrain.ingest.synth import FEATURE_DTYPES
    from disktrain.ingest.synth import SynthConfig as C
    from disktrain.ingest.typed_synth import SCHEMAS
    from disktrain.ingest.typed_synth import TypedSynthConfig as T

    p.set_defaults(func=_run_synth, configs=_synth_configs)
    _option(p, "--out", C, "out", type=_location, required=True, metavar="DIR",
            help="dataset directory to create, or an object-store URL (s3://bucket/prefix: "
            "written on this node, then published there)")
    _option(p, "--nodes", C, "num_nodes", type=int, metavar="N",
            help="number of nodes (required without --typed)")
    _option(p, "--avg-degree", C, "avg_degree", type=float, metavar="D",
            help="mean in-degree (default: %(default)s)")
    p.add_argument("--typed", choices=SCHEMAS, default=None,
                   help="generate this typed graph instead of the homogeneous one")
    _option(p, "--papers", T, "num_papers", type=int, metavar="N",
            help="with --typed: number of papers; the other types' counts scale from it "
            "(IGBH-full's ratios)")
    for dest, flag in _TYPED_ONLY.items():
        if dest != "num_papers":
            per = "author" if dest == "affiliated_to_degree" else "paper"
            _option(p, flag, T, dest, type=float, metavar="D",
                    help=f"with --typed: {dest.removesuffix('_degree')} edges per {per} "
                    "(default: %(default).3g, IGBH-full's)")
    _option(p, "--feature-dim", C, "feature_dim", type=int, metavar="F",
            help="features per node (default: %(default)s)")
    _option(p, "--classes", C, "num_classes", type=int, metavar="C",
            help="number of classes (default: %(default)s)")
    _option(p, "--seed", C, "seed", type=int, metavar="S",
            help="random seed (default: %(default)s)")
    for split in ("train", "val", "test"):
        _option(p, f"--{split}-fraction", C, f"{split}_fraction", type=float, metavar="P",
                help=f"share of the nodes in the {split} split (default: %(default)s)")
    _option(p, "--feature-dtype", C, "feature_dtype", choices=FEATURE_DTYPES,
            help="stored feature type (default: %(default)s)")
    _link_options(p, C)
    _option(p, "--overwrite", C, "overwrite", action="store_true",
            help="replace DIR if it exists")
    _add_progress(p, C)


def _synth_configs(args: argparse.Namespace) -> dict[str, object]:
    """SynthConfig, or TypedSynthConfig with ``--typed`` (the options they share have the
    same field names and defaults); an option of the other graph alone is an error."""
    from disktrain.ingest.synth import SynthConfig
    from disktrain.ingest.typed_synth import TypedSynthConfig

    typed = args.typed is not None
    cls, other = (TypedSynthConfig, SynthConfig) if typed else (SynthConfig, TypedSynthConfig)
    own, foreign = (_TYPED_ONLY, _SYNTH_ONLY) if typed else (_SYNTH_ONLY, _TYPED_ONLY)
    stray = [flag for dest, flag in foreign.items()
             if getattr(args, dest) not in (None, _default(other, dest))]
    if stray:
        raise ConfigError(f"synth: {', '.join(stray)} only "
                          f"{'without' if typed else 'with'} --typed")
    size = next(iter(own))
    if getattr(args, size) is None:
        raise ConfigError(f"synth: {own[size]} N is required"
                          + (f" with --typed {args.typed}" if typed else
                             " (or --typed igbh --papers N)"))
    return {"": _config(cls, args)}


def _run_synth(args: argparse.Namespace) -> None:
    from disktrain.ingest.synth import synthesize
    from disktrain.ingest.typed_synth import synthesize_typed

    _print_summary(_published(configs(args)[""], synthesize_typed if args.typed else synthesize))


def _location(text: str) -> str | Path:
    """A path on the command line: an object-store URL (``s3://...``) stays a string."""
    from disktrain.storage.objstore import is_url

    return text if is_url(text) else Path(text)


def _local(location: str | Path) -> Path:
    """The local directory of ``location``: itself, or a URL's copy staged on this node."""
    from disktrain.storage.objstore import is_url
    from disktrain.storage.remote import stage

    return stage(location) if is_url(location) else Path(location)


def _published(cfg, write):
    """``write(cfg)`` (a dataset writer); with ``cfg.out`` a URL, into this node's stage of
    it, then published there (refused where a dataset is published, unless
    ``cfg.overwrite``); the local path written."""
    from disktrain.storage.objstore import Remote, is_url
    from disktrain.storage.remote import publish, staged_path

    if not is_url(url := cfg.out):
        return write(cfg)
    if Remote.of(url).manifest(missing_ok=True) is not None and not cfg.overwrite:
        raise FileExistsError(f"{url} already holds a published dataset (pass --overwrite "
                              "to replace it)")
    local = write(dataclasses.replace(cfg, out=staged_path(url), overwrite=True))
    files = publish(local, url, progress=cfg.progress)["files"]
    print(f"published {url}: {len(files)} files, "
          f"{format_bytes(sum(size for size, _ in files.values()))} (staged here: {local})")
    return local


# info

@_command("info", help="print a dataset's attributes",
          description="Print a dataset's attributes and arrays.")
def _info_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=_location, metavar="DIR",
                   help="dataset directory or object-store URL")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_info)


def dataset_info(path: str | Path) -> dict:
    """Everything ``disktrain info`` reports: the dataset, its sample and packed stores."""
    from disktrain.pack import PackedStore
    from disktrain.sample import SampleStore
    from disktrain.storage.dataset import Dataset
    from disktrain.storage.lock import read_lock

    info = Dataset(path).info()
    with read_lock(path, "info"):  # a prepare meanwhile is refused, or refuses this
        for name, store in (("samples", SampleStore), ("packed", PackedStore)):
            if (Path(path) / name / "zarr.json").exists():
                info[name] = store(path).info()
    return info


def _run_info(args: argparse.Namespace) -> None:
    info = dataset_info(_local(args.path))
    if args.json:
        print(json.dumps(info))
    else:
        _print_tree(info)


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
    if link := info.get("link_split"):
        print(f"link split: {link['train']} train, {link['val']} val, {link['test']} test "
              f"edges, {link.get('eval_negatives', 0)} negatives per val/test edge")


# publish, stage

@_command("publish", help="upload a dataset directory and its prepared stores to object storage",
          description="Upload a local dataset directory (with its sample, packed and "
          "evaluation stores) to an object-store URL (s3://bucket/prefix, any URL pyarrow "
          "opens), files the prefix already holds unchanged skipped, then write its manifest "
          "last: a prefix without one is incomplete and refused by readers. Credentials and "
          "endpoint come from the environment or ~/.aws (AWS_ENDPOINT_URL for a non-AWS S3).")
def _publish_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="DIR", help="dataset directory")
    p.add_argument("url", metavar="URL", help="object-store prefix, e.g. s3://bucket/papers")
    _add_progress(p)
    p.set_defaults(func=_run_publish)


def _url(text: str) -> str:
    """An object-store URL argument (ConfigError for anything else)."""
    from disktrain.storage.objstore import is_url

    if not is_url(text):
        raise ConfigError(f"URL must be an object-store URL (s3://bucket/prefix), got {text!r}")
    return text


def _run_publish(args: argparse.Namespace) -> None:
    from disktrain.storage.remote import publish

    _url(args.url)
    manifest = publish(args.path, args.url, progress=args.progress)
    print(json.dumps({"url": args.url, "files": len(manifest["files"]),
                      "bytes": sum(size for size, _ in manifest["files"].values())}))


@_command("stage", help="stage a published dataset on this node and print its local path",
          description="Make this node's copy of a dataset published under an object-store "
          "URL (DISKTRAIN_STAGE_DIR, default ~/.cache/disktrain/stage): its metadata now, "
          "chunk files when first read, packed rows never (read by ranged GETs). prepare, "
          "train, infer and evaluate stage a URL themselves; this prints where.")
def _stage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="object-store prefix, e.g. s3://bucket/papers")
    p.set_defaults(func=_run_stage)


def _run_stage(args: argparse.Namespace) -> None:
    print(_local(_url(args.url)))


# verify

@_command("verify", help="check every stored byte of a dataset and its prepared stores",
          description="Check every chunk file of every array of a dataset and of its sample "
          "and packed stores (present, full size, crc32c), and that the stores were made from "
          "this dataset and from each other. Names each bad array, chunk file and batch, and "
          "the step to rerun. Exit status 0: clean; 1: damage found; 2: not a dataset.")
def _verify_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=_location, metavar="DIR", help="dataset directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_progress(p)
    p.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from disktrain.verify import verify

    if isinstance(args.path, str):
        raise ConfigError(f"verify checks a local directory, not {args.path}: a published "
                          "dataset is checked as it is read (every object against its "
                          "manifest's crc32c, every packed chunk against its own)")
    report = verify(args.path, progress=args.progress)
    print(json.dumps(report.to_dict()) if args.json else "\n".join(report.lines()))
    return 0 if report.clean else 1


# prepare

@_command("prepare", help="pre-sample every batch and pack its features",
          description="Offline neighbor sampling of every mini-batch of every epoch "
          "(DATASET/samples), then tiering and packing of the features each batch reads "
          "(DATASET/packed). Resumes an interrupted run with the same settings.")
def _prepare_options(p: argparse.ArgumentParser) -> None:
    from disktrain.kernels.aggregate import AGGREGATIONS
    from disktrain.pack import PackConfig as P
    from disktrain.sample import SampleConfig as S
    from disktrain.sample.link import NEGATIVE_MODES, NEGATIVE_SAMPLING
    from disktrain.sample.plan import TASKS

    p.set_defaults(func=_run_prepare, configs=_configs_of({"sample.": S, "pack.": P}))
    p.add_argument("dataset", type=_location, metavar="DATASET",
                   help="dataset directory, or object-store URL (s3://bucket/prefix: staged "
                   "on this node, prepared, and the stores published there)")
    fanouts = ",".join(map(str, _default(S, "fanouts")))
    _option(p, "--fanouts", S, "fanouts", "sample.", type=parse_fanouts, metavar="F1,F2,..",
            help="neighbors per hop from the seeds; -1 = all; write --fanouts=-1,-1 when the "
            f"list starts with -1; on a typed graph, of every relation (default: {fanouts})")
    _option(p, "--relation-fanouts", S, "relation_fanouts", "sample.",
            type=parse_relation_fanouts, metavar="REL=F1,..;REL=..",
            help="typed graphs: these relations' own neighbors per hop (0: not sampled at "
            "that hop); a relation is src__rel__dst, or rel alone when unique")
    _option(p, "--batch-size", S, "batch_size", "sample.", type=int,
            help="seeds per batch; with --task link, positive edges (default: %(default)s)")
    _option(p, "--epochs", S, "epochs", "sample.", type=int,
            help="epochs of batches to pre-sample (default: %(default)s)")
    _option(p, "--task", S, "task", "sample.", choices=TASKS,
            help="node: batches of the train split's nodes; link: batches of the training "
            "edges of a dataset ingested with --edge-split, with negatives drawn for them, "
            "for `train --task link` (default: %(default)s)")
    _option(p, "--num-negatives", S, "num_negatives", "sample.", type=int, metavar="K",
            help="--task link: negatives per positive edge (per batch with --negative-mode "
            "shared) (default: %(default)s)")
    _option(p, "--negative-sampling", S, "negative_sampling", "sample.",
            choices=NEGATIVE_SAMPLING, help="--task link: negatives drawn uniformly over the "
            "nodes or by in-degree^0.75 (default: %(default)s)")
    _option(p, "--edges-per-epoch", S, "edges_per_epoch", "sample.", type=int, metavar="N",
            help="--task link: train each epoch on N of the training edges, another random "
            "subset every epoch (default: all)")
    _option(p, "--negative-mode", S, "negative_mode", "sample.", choices=NEGATIVE_MODES,
            help="--task link: source: each negative keeps its positive's source (PyG's "
            "triplet negatives); pairs: a random source and destination (PyG's binary); "
            "shared: --num-negatives destinations per batch, paired with every source "
            "(default: %(default)s)")
    _option(p, "--seed", S, "seed", "sample.", type=int,
            help="random seed (default: %(default)s)")
    _option(p, "--group-size", S, "group_size", "sample.", type=int,
            help="batches per sampling task (default: %(default)s)")
    _option(p, "--gpu-cache-bytes", P, "gpu_cache_bytes", "pack.", type=parse_bytes,
            metavar="BYTES", help="GPU cache for the hottest rows, e.g. 2G (default: "
            f"{format_bytes(_default(P, 'gpu_cache_bytes'))})")
    _option(p, "--cpu-cache-bytes", P, "cpu_cache_bytes", "pack.", type=parse_bytes,
            metavar="BYTES", help="CPU cache for the next hottest rows (default: "
            f"{format_bytes(_default(P, 'cpu_cache_bytes'))})")
    _option(p, "--max-packed-bytes", P, "max_packed_bytes", "pack.", type=parse_bytes,
            metavar="BYTES", help="refuse to pack more than this; says what would fit")
    _option(p, "--chunk-bytes", P, "chunk_bytes", "pack.", type=parse_bytes,
            metavar="BYTES", help="bytes per packed chunk file (default: "
            f"{format_bytes(_default(P, 'chunk_bytes'))})")
    _option(p, "--shard-bytes", P, "shard_bytes", "pack.", type=parse_bytes,
            metavar="BYTES", help="bytes per shard file of packed chunks (an object on object "
            f"storage) (default: {format_bytes(_default(P, 'shard_bytes'))})")
    _option(p, "--group-bytes", P, "group_bytes", "pack.", type=parse_bytes,
            metavar="BYTES", help="memory of one packing group (each group is one pass over "
            "the raw features; with --ray-address the tasks share the groups out, so smaller "
            "groups spread packing over more nodes) (default: "
            f"{format_bytes(_default(P, 'group_bytes'))})")
    _option(p, "--aggregate-first-hop", P, "aggregate_first_hop", "pack.",
            choices=("off", *AGGREGATIONS), help="sum each batch's first-layer aggregates "
            "while packing and pack them with the first layer's targets' own rows instead of "
            "every sampled neighbour's row: mean for a GraphSAGE (--model sage), gcn for a "
            "GCN (--model gcn); fewer rows to pack, read and compute (default: %(default)s)")
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


def _run_prepare(args: argparse.Namespace) -> None:
    from disktrain.pack.prepare import prepare_dataset
    from disktrain.sample import SampleStore

    built = configs(args)
    sample_cfg, pack_cfg = built["sample."], built["pack."]
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise ConfigError(f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")
    kwargs = {"evaluation": args.evaluation, "eval_batch_size": args.eval_batch_size,
              "progress": args.progress}
    if args.ray_address:  # a URL: its tasks stage it on their nodes, write to it, publish
        from disktrain.cluster.ray_prepare import prepare_on_ray

        packed, evaluation = prepare_on_ray(args.dataset, sample_cfg, pack_cfg,
                                            args.ray_address, **kwargs)
        local = packed.path.parent
    else:
        local = _local(args.dataset)
        packed, evaluation = prepare_dataset(local, sample_cfg, pack_cfg, **kwargs)
        if isinstance(args.dataset, str):
            from disktrain.storage.remote import publish

            publish(local, args.dataset, progress=args.progress)
    # the stores just made (opening the packed store again would re-check all of `slots`)
    print(json.dumps({"samples": SampleStore(local).info(), "packed": packed.info(),
                      "eval": {split: store.info() for split, store in evaluation.items()}}))


# train

@_command("train", help="train a GNN on a prepared dataset",
          description="Train on the pre-sampled, packed batches of a prepared dataset through "
          "the staged read -> assemble -> copy -> compute pipeline. Runs alone, under torchrun "
          "(RANK/LOCAL_RANK/WORLD_SIZE), or on Ray Train with --workers. The last line of "
          "standard output is one JSON object (epochs, val_acc, test_acc, epoch_time_s, ...).")
def _train_options(p: argparse.ArgumentParser) -> None:
    from disktrain.cluster.ray_train import RayTrainConfig as R
    from disktrain.loader.config import LoaderConfig
    from disktrain.loader.loader import PLAN_REUSE
    from disktrain.models import MODELS
    from disktrain.models.link import DECODERS
    from disktrain.robust import AGGREGATORS, PRE_AGGREGATORS, WORKER_ATTACKS
    from disktrain.robust import AttackConfig as A
    from disktrain.sample.plan import TASKS
    from disktrain.train.config import ON_NONFINITE, OPTIMIZERS
    from disktrain.train.config import TrainConfig as T
    from disktrain.train.evaluate import EVAL_MODES

    p.set_defaults(func=_run_train, configs=_train_configs)
    p.add_argument("dataset", type=str, metavar="DATASET", help="prepared dataset directory")
    _option(p, "--model", T, "model.model", choices=MODELS,
            help="the node classifier; mlp: a features-only baseline; on a typed graph rsage "
            "or rgat (sage, gat mean them there) (default: %(default)s)")
    _option(p, "--epochs", T, "epochs", type=int, help="training epochs (default: %(default)s)")
    _option(p, "--task", T, "task", choices=TASKS,
            help="node: classify the seed nodes; link: score edges against negatives, on a "
            "dataset prepared with --task link; MRR, Hits@K and AUC of the val and test edges "
            "from exact embeddings after training (default: %(default)s)")
    _option(p, "--decoder", T, "model.decoder", choices=DECODERS,
            help="--task link: score a pair of node embeddings by their dot product, or by "
            "an MLP over their elementwise product (default: %(default)s)")
    _option(p, "--seed", T, "seed", type=int,
            help="seeds initialization, dropout and the batch order (default: %(default)s)")
    _option(p, "--hidden", T, "model.hidden", type=int,
            help="hidden units per layer; for gat all heads together, a multiple of --heads "
            "(default: %(default)s)")
    _option(p, "--heads", T, "model.heads", type=int,
            help="attention heads (gat; default: %(default)s)")
    _option(p, "--dropout", T, "model.dropout", type=float,
            help="dropout between layers (default: %(default)s)")
    _option(p, "--input-dropout", T, "model.input_dropout", type=float,
            help="dropout on the input features (default: %(default)s)")
    _option(p, "--optimizer", T, "optimizer.optimizer", choices=OPTIMIZERS,
            help="adam, or sgd with --momentum (default: %(default)s)")
    _option(p, "--lr", T, "optimizer.lr", type=float, help="learning rate (default: %(default)s)")
    _option(p, "--momentum", T, "optimizer.momentum", type=float,
            help="SGD momentum (--optimizer sgd; default: %(default)s)")
    _option(p, "--worker-momentum", T, "worker_momentum", type=float, metavar="BETA",
            help="each worker sends the running average of its gradients (beta 0.9 in the "
            "Byzantine-robustness literature, with --optimizer sgd --momentum 0) instead of "
            "the gradient; 0: off (default: %(default)s)")
    _option(p, "--weight-decay", T, "optimizer.weight_decay", type=float,
            help="weight decay (default: %(default)s)")
    _option(p, "--plan-reuse", T, "plan_reuse", choices=PLAN_REUSE,
            help="epochs beyond the E pre-sampled ones. fresh: each is sampled and packed in "
            "the background while the one before trains; cycle: epoch e reuses pre-sampled "
            "epoch e mod E; pool: each epoch draws from every pre-sampled batch (default: "
            "%(default)s)")
    _option(p, "--prepare-ahead", T, "prepare_ahead", type=int, metavar="K",
            help="with --plan-reuse fresh: epochs prepared ahead of the one training, each on "
            "disk until trained (default: %(default)s)")
    _option(p, "--eval", T, "evaluation.mode", choices=EVAL_MODES,
            help="packed: val/test batches as `prepare` packed them; online: sampled now, "
            "features read from the raw array; auto: packed where prepared (default: "
            "%(default)s)")
    _option(p, "--eval-every", T, "evaluation.every", type=int,
            help="evaluate every N epochs and after the last (default: %(default)s)")
    _option(p, "--eval-batch-size", T, "evaluation.batch_size", type=int,
            help="seeds per batch of online evaluation (default: %(default)s)")
    _option(p, "--device", T, "loader.device",
            help="cpu, cuda (this worker's GPU), cuda:N (default: %(default)s)")
    _option(p, "--prefetch", T, "loader.prefetch", type=int,
            help="batches in flight per stage (default: %(default)s)")
    _option(p, "--loader-buffer-bytes", T, "loader.buffer_bytes", type=parse_bytes,
            help="most bytes of feature buffers the loader holds at once; fewer batches are "
            f"prefetched where they are larger (default: "
            f"{format_bytes(LoaderConfig.buffer_bytes)})")
    _option(p, "--read-threads", T, "loader.read_threads", type=int,
            help="threads reading packed ranges (default: %(default)s)")
    _option(p, "--remote-window", T, "loader.remote_window", type=int,
            help="batches requested at once from a packed store on object storage, so that "
            "the requests' latency overlaps; each in flight holds up to twice its bytes "
            "(default: %(default)s)")
    _option(p, "--compute-threads", T, "compute_threads", type=int,
            help="torch threads for compute (default 0: on a CPU every core, but one while "
            "fresh epochs are prepared in the background)")
    _option(p, "--aggregator", T, "robust.aggregator", choices=tuple(AGGREGATORS),
            help="how workers' gradients combine: mean, or a Byzantine-robust rule "
            "(default: %(default)s)")
    _option(p, "--byzantine-f", T, "robust.f", type=int,
            help="faulty workers the robust rule tolerates (default: %(default)s)")
    _option(p, "--flag-subspace", T, "robust.subspace", type=int,
            help="the flag aggregator's subspace dimension r (default 0: f + 1)")
    _option(p, "--flag-lambda", T, "robust.flag_lambda", type=float,
            help="the flag aggregator's weight of the pairwise-difference terms (default: "
            "%(default)s, none)")
    _option(p, "--pre-aggregate", T, "robust.pre_aggregate", type=parse_names,
            metavar="NAMES", help="pre-aggregators applied in order before the rule, "
            f"comma-separated, from {', '.join(PRE_AGGREGATORS)} (default: none)")
    _option(p, "--bucket-size", T, "robust.bucket_size", type=int,
            help="bucketing's gradients averaged per bucket (default: %(default)s)")
    _option(p, "--clip-norm", T, "robust.clip_norm", type=float,
            help="static clipping's norm threshold (default: %(default)s)")
    _option(p, "--cc-tau", T, "robust.cc_tau", type=float,
            help="centered clipping's radius (default: %(default)s)")
    _option(p, "--cc-iters", T, "robust.cc_iters", type=int,
            help="centered clipping's iterations (default: %(default)s)")
    _option(p, "--attack", A, "attack", "attack.", choices=WORKER_ATTACKS,
            help="run real attacking workers: the ranks --byzantine-ranks send this attack "
            "instead of their gradient (label-flip: train on flipped labels)")
    _option(p, "--byzantine-ranks", A, "ranks", "attack.", type=parse_ranks, metavar="RANKS",
            help="with --attack: the attacking ranks, comma-separated, e.g. 0,3")
    _option(p, "--attack-param", A, "params", "attack.", type=parse_param,
            action=_ParamsAction, metavar="NAME=VALUE",
            help="with --attack: a parameter of the attack (repeatable), e.g. eps=4 for ipm")
    _option(p, "--attack-seed", A, "seed", "attack.", type=int,
            help="with --attack: seed of the gaussian attack's noise (default: %(default)s)")
    _option(p, "--run-dir", T, "run_dir", metavar="DIR",
            help="where the run writes: checkpoints (DIR/checkpoints) and fresh epochs "
            "(DIR/epochs/RUN, removed at the end); default: the dataset directory, which must "
            "then be writable (a read-only dataset needs --run-dir)")
    _option(p, "--checkpoint-dir", T, "checkpoint.dir",
            help="default: RUN_DIR/checkpoints (DATASET/checkpoints without --run-dir)")
    _option(p, "--checkpoint-every", T, "checkpoint.every", type=int,
            help="also checkpoint every N batches (default 0: epoch ends only)")
    _option(p, "--keep-checkpoints", T, "checkpoint.keep", type=int, metavar="K",
            help="checkpoint files kept, newest first (default: %(default)s, the newest and "
            "one to fall back on)")
    _option(p, "--resume", T, "checkpoint.resume", action="store_true",
            help="continue from the newest checkpoint that loads (in the checkpoint directory "
            "above: give the same --run-dir or --checkpoint-dir)")
    _option(p, "--on-nonfinite", T, "on_nonfinite", choices=ON_NONFINITE,
            help="a step with a non-finite loss or gradient: stop with an error or skip it "
            "(no update; counted as skipped_steps) (default: %(default)s)")
    _option(p, "--metrics", T, "metrics", help="append one JSON record per epoch to this file "
            "(or object: s3://bucket/run/metrics.jsonl)")
    _option(p, "--max-batches", T, "max_batches", type=int,
            help="at most this many batches per epoch")
    _option(p, "--workers", R, "workers", "ray.", type=int,
            help="train on Ray Train with this many workers (default: %(default)s, this "
            "process)")
    _option(p, "--gpus-per-worker", R, "gpus_per_worker", "ray.", type=float,
            help="GPUs per Ray worker (default: %(default)s)")
    _option(p, "--ray-address", R, "address", "ray.",
            help="Ray cluster to use with --workers (default: start a local one)")
    _add_progress(p, T)


def _train_configs(args: argparse.Namespace) -> dict:
    from disktrain.cluster.ray_train import RayTrainConfig
    from disktrain.robust import AttackConfig
    from disktrain.train import TrainConfig

    values = vars(args)
    attack = None
    if values["attack.attack"] is not None:
        if values["attack.ranks"] is None:
            raise ConfigError(f"--attack {values['attack.attack']} needs --byzantine-ranks "
                              "(the attacking ranks, e.g. 0,3)")
        attack = _config(AttackConfig, args, "attack.")
    else:
        present = {"--byzantine-ranks": values["attack.ranks"] is not None,
                   "--attack-param": bool(values["attack.params"]),
                   "--attack-seed": values["attack.seed"] != _default(AttackConfig, "seed")}
        if given := [flag for flag, used in present.items() if used]:
            raise ConfigError(f"{', '.join(given)} apply only with --attack NAME")
    rest = argparse.Namespace(**{k: v for k, v in values.items()
                                 if not k.startswith("attack.")}, attack=attack)
    return {"": _config(TrainConfig, rest), "ray.": _config(RayTrainConfig, args, "ray.")}


def _run_train(args: argparse.Namespace) -> None:
    from disktrain.train import train

    built = configs(args)
    cfg, ray_cfg = built[""], built["ray."]
    if ray_cfg.workers > 1 or ray_cfg.address:
        from disktrain.cluster.ray_train import fit_on_ray

        cfg.check_world_size(ray_cfg.workers)
        if cfg.loader.device.startswith("cuda") and not ray_cfg.gpus_per_worker:
            raise ConfigError(f"device {cfg.loader.device!r} with --workers needs "
                              "--gpus-per-worker > 0 (Ray gives each worker its GPU)")
        result = fit_on_ray(cfg, ray_cfg)
    else:
        result = train(cfg)
        _close_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        if cfg.task == "link" or cfg.evaluation.mode == "exact":
            result.update(_exact_metrics(cfg))
        print(json.dumps(result))


def _exact_metrics(cfg) -> dict:
    """What the run's last checkpoint scores on exact embeddings: a link model's ``link``,
    per split its MRR, Hits@K and AUC; a node classifier's ``exact_val_acc`` and
    ``exact_test_acc`` (``--eval exact``), beside the sampled ones."""
    from disktrain.infer import evaluate_exact

    found = evaluate_exact(cfg.staged().dataset, cfg.checkpoint.directory(cfg.writes_to),
                           work_dir=cfg.writes_to)
    if cfg.task == "link":
        return {"link": {split: {k.removeprefix(f"{split}_"): v for k, v in found.items()
                                 if k.startswith(f"{split}_")} for split in ("val", "test")}}
    return {f"exact_{k}": v for k, v in found.items() if k.endswith(("_acc", "_nodes"))}


def _close_process_group() -> None:
    """Destroy the process group that training set up (under torchrun), so that the rank
    exits with gloo's threads stopped, not torn down while the interpreter exits (which once
    aborted a rank after its run: "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# infer, evaluate

@_command("infer", help="a trained model's outputs for every node (or some), out of core",
          description="Layer-wise, full-neighbourhood inference: each layer computed for "
          "ranges of nodes in order, its input rows read from disk (the features, then the "
          "layer below's store), every layer a checked store that a rerun resumes from after "
          "a kill. Writes the last layer (the logits) as Zarr, .npy or Parquet, with the "
          "node ids and, with --predictions, the predicted class and class probabilities.")
def _infer_options(p: argparse.ArgumentParser) -> None:
    from disktrain.infer.config import FORMATS
    from disktrain.infer.config import InferConfig as C

    p.set_defaults(func=_run_infer, configs=_configs_of({"": C}))
    p.add_argument("dataset", type=_location, metavar="DIR",
                   help="dataset directory or object-store URL (staged on this node)")
    _option(p, "--checkpoint", C, "checkpoint", type=Path, required=True, metavar="CKPT",
            help="a checkpoint file, or a checkpoint directory (its newest good file)")
    _option(p, "--out", C, "out", type=Path, required=True, metavar="OUT",
            help="output directory (zarr, npy) or file (parquet); the layers are computed "
            "in OUT.layers/")
    _option(p, "--format", C, "format", choices=FORMATS,
            help="output format (default: %(default)s)")
    _option(p, "--predictions", C, "predictions", action="store_true",
            help="also write the predicted class (argmax) and class probabilities (softmax)")
    _option(p, "--nodes", C, "nodes", metavar="all|train|val|test|IDS.npy",
            help="whose outputs: all nodes, a split, or a .npy file of node ids; a subset "
            "computes each layer over the nodes it needs only (default: %(default)s)")
    _infer_shared(p, C)
    _option(p, "--chunk-rows", C, "chunk_rows", type=int, metavar="ROWS",
            help="rows per chunk file of the layer stores (default: about 4 MiB chunks)")
    _option(p, "--keep-layers", C, "keep_layers", action="store_true",
            help="keep every layer's store in OUT.layers/ (default: removed when done)")
    _option(p, "--overwrite", C, "overwrite", action="store_true",
            help="replace OUT if it exists")
    p.add_argument("--ray-address", dest="ray_address", metavar="ADDR",
                   help="compute each layer's ranges as Ray tasks on this cluster ('auto' "
                   "inside a Ray job, 'local' to start one here); every node sees the same "
                   "paths")
    p.add_argument("--workers", type=int, metavar="N",
                   help="compute each layer's ranges as Ray tasks on N CPUs of a Ray started "
                   "here (without --ray-address)")
    _add_progress(p, C)


def _infer_shared(p: argparse.ArgumentParser, C) -> None:
    """The options ``infer`` and ``evaluate`` share."""
    _option(p, "--fanout-cap", C, "fanout_cap", type=int, metavar="K",
            help="aggregate at most K in-neighbours per node, the same K at every layer, "
            "drawn deterministically (training's sampler, key --seed); 0: all (default)")
    _option(p, "--seed", C, "seed", type=int, help="key of the --fanout-cap draws "
            "(default: %(default)s)")
    _option(p, "--memory-budget", C, "memory_budget", type=parse_bytes, metavar="BYTES",
            help="bytes a range of nodes may take, e.g. 2G (default: a quarter of the "
            "memory available)")


def _run_infer(args: argparse.Namespace) -> None:
    from disktrain.infer import infer

    if isinstance(args.dataset, str) and (args.ray_address or args.workers):
        raise ConfigError(f"infer with Ray on {args.dataset}: inference of a dataset on "
                          "object storage runs on one node (without --workers/--ray-address)")
    args.dataset = _local(args.dataset)
    cfg = configs(args)[""]
    if args.workers is not None and (args.workers < 1 or args.ray_address):
        raise ConfigError(f"--workers must be >= 1 and without --ray-address, got "
                          f"{args.workers} (--ray-address {args.ray_address})")
    if args.ray_address or args.workers:
        from disktrain.cluster.ray_infer import infer_on_ray

        address = None if args.ray_address in (None, "local") else args.ray_address
        out = infer_on_ray(cfg, address, num_cpus=args.workers)
    else:
        out = infer(cfg)
    print(json.dumps({"out": str(out)}))


@_command("evaluate", help="exact val and test accuracy of a checkpoint (no sampling)",
          description="Val and test accuracy of a checkpoint's model from layer-wise, "
          "full-neighbourhood inference over the nodes those splits need; prints one JSON "
          "object.")
def _evaluate_options(p: argparse.ArgumentParser) -> None:
    from disktrain.infer.config import InferConfig as C

    p.set_defaults(func=_run_evaluate)
    p.add_argument("dataset", type=_location, metavar="DIR",
                   help="dataset directory or object-store URL (staged on this node)")
    _option(p, "--checkpoint", C, "checkpoint", type=Path, required=True, metavar="CKPT",
            help="a checkpoint file, or a checkpoint directory (its newest good file)")
    _infer_shared(p, C)
    _add_progress(p, C)


def _run_evaluate(args: argparse.Namespace) -> None:
    from disktrain.infer import InferConfig, evaluate_exact

    args.dataset = _local(args.dataset)
    cfg = _config(InferConfig, argparse.Namespace(**vars(args), out=Path("-")))  # checked
    print(json.dumps(evaluate_exact(cfg.dataset, cfg.checkpoint, fanout_cap=cfg.fanout_cap,
                                    seed=cfg.seed, memory_budget=cfg.memory_budget,
                                    progress=cfg.progress)))


# demo

@_command("demo", help="the whole path on a small built-in synthetic graph",
          description="Generate a small synthetic graph, prepare it (offline sampling and "
          "packing) and train GraphSAGE and a features-only MLP on it; report both.")
def _demo_options(p: argparse.ArgumentParser) -> None:
    from disktrain.demo import DemoConfig as C

    p.set_defaults(func=_run_demo, configs=_configs_of({"": C}))
    _option(p, "--out", C, "out", type=Path, metavar="DIR",
            help="keep the dataset here (default: a temporary directory, deleted)")
    _option(p, "--nodes", C, "num_nodes", type=int,
            help="nodes of the synthetic graph (default: %(default)s)")
    _option(p, "--epochs", C, "epochs", type=int,
            help="training epochs of each model (default: %(default)s)")
    _add_progress(p, C)


def _run_demo(args: argparse.Namespace) -> None:
    from disktrain.demo import run_demo

    print(json.dumps(run_demo(configs(args)[""])))
