"""Synthetic datasets: an R-MAT graph with planted, homophilous classes and noisy features.

Edges: edge ``e`` is a pure function of ``(seed, e)`` (counter-based splitmix64 hashes), so
the graph does not depend on the chunk size or the Numba thread count. A fraction
``1 - homophily`` of edges are Graph500-style R-MAT (a, b, c, d = 0.57, 0.19, 0.19, 0.05;
scale = ceil(log2 N); pairs with an id >= N are redrawn); the rest join an R-MAT source to a uniformly random node of the source's planted
class. Node ids are then shuffled by a seeded hash permutation (cycle-walked to [0, N)), so
degree does not follow id and nothing of size N is held in memory.

Labels are the planted classes. Features are the class centroid (random, norm ~1, pairwise
distance ~sqrt(2)) plus Gaussian noise of std ``noise`` per dimension: with the defaults one
node's features are ambiguous but the mean over its neighbors is informative, so a GNN that
aggregates neighbors beats an MLP on features alone. Splits are seeded, disjoint, and sorted.

Writing: the edges are generated once, bucketed by row into a temporary file and the CSR
built bucket by bucket in cache (:mod:`disktrain.ingest.csr`). Features are generated in blocks of
rows (in parallel) and written chunk file by chunk file
(:class:`~disktrain.storage.chunkfile.ChunkWriter`: converted, checksummed and written past the
page cache on two threads while the next block is generated); labels and splits are
written front to back (:class:`~disktrain.storage.chunkfile.ChunkFileWriter`). Every output byte is
written once; the spill file, about 1.5x the size of ``indices``, is written once and read
once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from disktrain.ingest.csr import CSRConfig, build_csr, spill_bytes
from disktrain.ingest.linksplit import HashSplit, LinkSplitConfig
from disktrain.kernels import rmat as krmat
from disktrain.kernels.rng import derive_key
from disktrain.storage.atomic import atomic_dir
from disktrain.storage.chunkfile import ChunkWriter, create_flat
from disktrain.storage.dataset import (
    SPLITS,
    DatasetMeta,
    chunk_file,
    create_features,
    dataset_bytes,
    index_dtype,
    provenance,
    write_small_array,
)
from disktrain.storage.diskspace import require_free
from disktrain.storage.lock import write_lock

RMAT_PROBS = (0.57, 0.19, 0.19, 0.05)
"""Graph500 R-MAT quadrant probabilities (a, b, c, d)."""
FEATURE_DTYPES = ("float32", "float16")
MAX_NODES = 2**48
NODE_CHUNK = 1 << 22
FEATURE_BLOCK_BYTES = 32 << 20
PERM_ROUNDS = 4
_MASK64 = (1 << 64) - 1
_STREAMS = {"edges": 1, "classes": 2, "graph_perm": 3, "split_perm": 4, "features": 5,
            "centroids": 6}


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What ``disktrain synth`` generates."""

    out: str | Path
    """Dataset directory to create."""
    num_nodes: int
    """Number of nodes N (>= 2 and >= num_classes)."""
    avg_degree: float = 10.0
    """Mean in-degree of the stored graph: num_edges ~= num_nodes * avg_degree (each
    undirected edge counts twice, once per direction)."""
    feature_dim: int = 128
    """Features per node."""
    num_classes: int = 10
    """Number of planted classes (labels)."""
    seed: int = 0
    """Everything written is a function of the seed (and the other parameters)."""
    homophily: float = 0.5
    """Fraction of edges drawn inside the source's planted class; the rest are R-MAT edges,
    which land in the same class by chance (1/num_classes), so the measured same-class
    fraction is homophily + (1 - homophily) / num_classes."""
    noise: float = 0.6
    """Std of the Gaussian feature noise per dimension (class centroids have norm ~1)."""
    train_fraction: float = 0.6
    """Fraction of nodes in the train split."""
    val_fraction: float = 0.2
    """Fraction of nodes in the validation split."""
    test_fraction: float = 0.2
    """Fraction of nodes in the test split (the three may sum to less than 1)."""
    chunk_edges: int = 1 << 22
    """Edges generated per chunk (bounds memory; the output does not depend on it)."""
    csr_bucket_rows: int = CSRConfig.bucket_rows
    """Rows the CSR build makes at once (:attr:`CSRConfig.bucket_rows`; the output does not
    depend on it)."""
    csr_memory_bytes: int = CSRConfig.memory_bytes
    """Edges the CSR build reads back at once (:attr:`CSRConfig.memory_bytes`; the output
    does not depend on it)."""
    feature_dtype: str = "float32"
    """float32 or float16."""
    undirected: bool = True
    """Store every generated edge in both directions."""
    dedup: bool = False
    """Drop repeated edges and self-loops (as the CSR build makes each row)."""
    overwrite: bool = False
    """Replace ``out`` if it exists."""
    progress: bool = True
    """Show tqdm progress bars."""
    link: LinkSplitConfig = field(default_factory=LinkSplitConfig)
    """The edge split for link prediction (``edge_split``; none by default): link prediction
    on the planted classes is learnable (an edge joins a class more often than chance)."""

    def __post_init__(self):
        _check_int("num_nodes", self.num_nodes, 2, MAX_NODES)
        if self.link.files:
            raise ValueError(f"synth splits its edges by edge_split, not from files "
                             f"({', '.join(self.link.files)})")
        _check_int("csr_memory_bytes", self.csr_memory_bytes, 1)
        _check_int("csr_bucket_rows", self.csr_bucket_rows, 1)
        if self.csr_bucket_rows & (self.csr_bucket_rows - 1):
            raise ValueError(f"csr_bucket_rows must be a power of two, "
                             f"got {self.csr_bucket_rows}")
        _check_int("num_classes", self.num_classes, 2, self.num_nodes)
        _check_int("feature_dim", self.feature_dim, 1)
        _check_int("seed", self.seed, 0, _MASK64)
        _check_int("chunk_edges", self.chunk_edges, 1)
        if not (math.isfinite(self.avg_degree) and self.avg_degree > 0):
            raise ValueError(f"avg_degree must be a positive number, got {self.avg_degree!r}")
        if not 0.0 <= self.homophily <= 1.0:
            raise ValueError(f"homophily must be in [0, 1], got {self.homophily!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be >= 0, got {self.noise!r}")
        for name in ("train_fraction", "val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if total > 1.0 + 1e-9:
            raise ValueError(f"train_fraction + val_fraction + test_fraction must be <= 1, got "
                             f"{self.train_fraction} + {self.val_fraction} + "
                             f"{self.test_fraction} = {total}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES}, "
                             f"got {self.feature_dtype!r}")
        if self.num_input_edges < 1:
            raise ValueError(f"num_nodes * avg_degree must give at least one edge, got "
                             f"{self.num_nodes} * {self.avg_degree}")

    @property
    def num_input_edges(self) -> int:
        """Edges generated (each stored twice when undirected)."""
        return round(self.num_nodes * self.avg_degree / (2 if self.undirected else 1))

    @property
    def scale(self) -> int:
        """R-MAT scale: ceil(log2(num_nodes))."""
        return (self.num_nodes - 1).bit_length()

    def split_sizes(self) -> tuple[int, int, int]:
        """Nodes in train, val, test (floors of the cumulative fractions, so they fit in N)."""
        cum = np.cumsum([self.train_fraction, self.val_fraction, self.test_fraction])
        bounds = [0] + [min(self.num_nodes, math.floor(c * self.num_nodes + 1e-6)) for c in cum]
        return tuple(int(x) for x in np.diff(bounds))


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _key(seed: int, stream: str, i: int = 0) -> np.uint64:
    """A 64-bit key for one random stream of one seed."""
    return np.uint64(derive_key(seed, _STREAMS[stream], i))


def _perm_keys(seed: int, stream: str) -> np.ndarray:
    """Round keys of a hash permutation: row 0 XOR keys, row 1 odd multipliers."""
    keys = np.empty((2, PERM_ROUNDS), np.uint64)
    for r in range(PERM_ROUNDS):
        keys[0, r] = _key(seed, stream, 2 * r)
        keys[1, r] = _key(seed, stream, 2 * r + 1) | np.uint64(1)
    return keys


class EdgeGenerator:
    """The seeded edge list in chunks: callable, returning a fresh iterator (for build_csr)."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.num_edges, self.chunk_edges = cfg.num_input_edges, cfg.chunk_edges
        probs = np.cumsum(RMAT_PROBS[:3]) * 65536
        self._thresholds = np.round(probs).astype(np.int64)
        self._edge_key = _key(cfg.seed, "edges")
        self._class_key = _key(cfg.seed, "classes")
        self._perm = _perm_keys(cfg.seed, "graph_perm")

    def chunk(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(src, dst) int64 of generated edges [start, stop)."""
        cfg = self.cfg
        src = np.empty(stop - start, np.int64)
        dst = np.empty(stop - start, np.int64)
        krmat.rmat_edges(start, src, dst, cfg.num_nodes, cfg.scale, self._thresholds,
                         float(cfg.homophily), cfg.num_classes, self._edge_key,
                         self._class_key, self._perm)
        return src, dst

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All edges in chunks of ``chunk_edges``, one at a time: the generator takes every
        core, then the caller's kernels do (Numba's parallel regions do not share cores
        well)."""
        for start in range(0, self.num_edges, self.chunk_edges):
            yield self.chunk(start, min(start + self.chunk_edges, self.num_edges))


def node_labels(cfg: SynthConfig, start: int, stop: int) -> np.ndarray:
    """Planted classes (int64) of nodes [start, stop)."""
    out = np.empty(stop - start, np.int64)
    krmat.node_classes(start, out, cfg.num_classes, _key(cfg.seed, "classes"))
    return out


def class_centroids(cfg: SynthConfig) -> np.ndarray:
    """(num_classes, feature_dim) float64 centroids, entries N(0, 1 / feature_dim)."""
    rng = np.random.default_rng([cfg.seed, _STREAMS["centroids"]])
    return rng.standard_normal((cfg.num_classes, cfg.feature_dim)) / math.sqrt(cfg.feature_dim)


@functools.cache
def _quantiles() -> np.ndarray:
    return krmat.normal_quantiles()


def node_features(cfg: SynthConfig, start: int, stop: int,
                  centroids: np.ndarray | None = None) -> np.ndarray:
    """Features (float32) of nodes [start, stop)."""
    if centroids is None:
        centroids = class_centroids(cfg)
    out = np.empty((stop - start, cfg.feature_dim), np.float32)
    krmat.class_features(start, out, centroids, float(cfg.noise), cfg.num_classes,
                         _key(cfg.seed, "classes"), _key(cfg.seed, "features"), _quantiles())
    return out


def split_codes(cfg: SynthConfig, start: int, stop: int) -> np.ndarray:
    """Split of nodes [start, stop): 0 train, 1 val, 2 test, -1 none (int8)."""
    bounds = np.concatenate([[0], np.cumsum(cfg.split_sizes())]).astype(np.int64)
    out = np.empty(stop - start, np.int8)
    krmat.split_codes(start, out, cfg.num_nodes, _perm_keys(cfg.seed, "split_perm"),
                      cfg.scale, bounds)
    return out


def synthesize(cfg: SynthConfig) -> Path:
    """Generate the dataset ``cfg`` describes into ``cfg.out`` (atomically); return its path."""
    with write_lock(cfg.out, "synth"), atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        csr_cfg = CSRConfig(undirected=cfg.undirected, dedup=cfg.dedup,
                            drop_self_loops=cfg.dedup, progress=cfg.progress,
                            bucket_rows=cfg.csr_bucket_rows,
                            memory_bytes=cfg.csr_memory_bytes)
        require_free(cfg.out, _disk_need(cfg, csr_cfg), "synth")
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        split = _link_split(cfg, csr_cfg)
        num_edges = build_csr(group, split or EdgeGenerator(cfg), cfg.num_nodes,
                              cfg.num_input_edges, csr_cfg)
        if split:
            split.write(group)
        _write_features(group, cfg)
        _write_labels_and_splits(group, cfg)
        meta = DatasetMeta(num_nodes=cfg.num_nodes, num_edges=num_edges,
                           feature_dim=cfg.feature_dim, num_classes=cfg.num_classes,
                           feature_dtype=cfg.feature_dtype,
                           index_dtype=str(index_dtype(cfg.num_nodes)),
                           provenance=provenance(sources=_sources(cfg)))
        group.attrs.update(asdict(meta))
    return Path(cfg.out)


def _link_split(cfg: SynthConfig, csr_cfg: CSRConfig) -> HashSplit | None:
    """The generated edges split for link prediction, if ``cfg.link`` asks."""
    if cfg.link.edge_split is None:
        return None
    return HashSplit(EdgeGenerator(cfg), cfg.link, cfg.num_nodes, csr_cfg)


def _disk_need(cfg: SynthConfig, csr_cfg: CSRConfig) -> int:
    """The most disk space synth holds at once: the dataset, or, while the CSR is built
    (first), the CSR, the link split's arrays and the CSR's temporary spill file."""
    num_edges = cfg.num_input_edges * (2 if cfg.undirected else 1)
    split = _link_split(cfg, csr_cfg)
    link = split.bounds(cfg.num_input_edges) if split else None
    dataset = dataset_bytes(num_nodes=cfg.num_nodes, num_edges=num_edges,
                            feature_dim=cfg.feature_dim, feature_dtype=cfg.feature_dtype,
                            labels=True, splits=dict(zip(SPLITS, cfg.split_sizes())),
                            link=link)
    csr = dataset_bytes(num_nodes=cfg.num_nodes, num_edges=num_edges, feature_dim=0,
                        feature_dtype=np.uint8, labels=False, splits={}, link=link)
    return max(dataset, csr + spill_bytes(cfg.num_nodes, num_edges, csr_cfg))


def _sources(cfg: SynthConfig) -> dict[str, str]:
    params = {k: str(v) for k, v in asdict(cfg).items()
              if k not in ("out", "overwrite", "progress", "chunk_edges", "csr_bucket_rows",
                           "csr_memory_bytes", "link")}
    if cfg.link.edge_split is not None:
        params.update({k: str(getattr(cfg.link, k))
                       for k in ("edge_split", "split_seed", "eval_negatives")})
    return {"generator": "rmat", "rmat_probs": str(RMAT_PROBS), **params}


def _write_features(group: zarr.Group, cfg: SynthConfig) -> None:
    """Generate the features in blocks of whole chunks (parallel kernel), convert each
    chunk to the stored dtype in a buffer of the writer (two threads), and let the writer
    write the chunk files while the next block is generated (at most two blocks' buffers:
    a block takes all of its own before submitting any)."""
    features = create_features(group, cfg.num_nodes, cfg.feature_dim, cfg.feature_dtype)
    rows = features.chunks[0]
    per_block = max(1, FEATURE_BLOCK_BYTES // (rows * cfg.feature_dim * 4))
    step = rows * per_block
    dtype = np.dtype(cfg.feature_dtype).newbyteorder("<")
    array_dir = Path(group.store.root) / group.path / "features"
    centroids = class_centroids(cfg)
    with ChunkWriter(rows * cfg.feature_dim * dtype.itemsize,
                     lambda c: (chunk_file(array_dir, c, 0), None), 2, per_block) as pool, \
            ThreadPoolExecutor(2, thread_name_prefix="synth-convert") as convert, \
            tqdm(total=cfg.num_nodes, desc="synth: features", unit="row", unit_scale=True,
                 disable=not cfg.progress) as bar:
        for a in range(0, cfg.num_nodes, step):
            b = min(a + step, cfg.num_nodes)
            block = node_features(cfg, a, b, centroids)
            parts = [(block[c - a:c - a + rows], pool.buffer()) for c in range(a, b, rows)]
            list(convert.map(lambda p: _store_rows(*p, pool.chunk_bytes, dtype), parts))
            for c, (_, buf) in zip(range(a, b, rows), parts):
                pool.submit(c // rows, buf)
            bar.update(b - a)


def _store_rows(rows: np.ndarray, buf: np.ndarray, chunk_bytes: int, dtype: np.dtype) -> None:
    """``rows`` as ``dtype`` at the start of ``buf``, zeros after them up to ``chunk_bytes``
    (Zarr stores a partial edge chunk full-size, padded with the fill value)."""
    nbytes = rows.size * dtype.itemsize
    np.copyto(buf[:nbytes].view(dtype).reshape(rows.shape), rows, casting="same_kind")
    buf[nbytes:chunk_bytes] = 0


def _write_labels_and_splits(group: zarr.Group, cfg: SynthConfig) -> None:
    """Labels and the split id arrays, front to back in node chunks."""
    sizes = cfg.split_sizes()
    with ExitStack() as stack:
        labels = stack.enter_context(create_flat(group, "labels", (cfg.num_nodes,), np.int64))
        splits = []
        for name, size in zip(SPLITS, sizes):
            if size:
                splits.append(stack.enter_context(create_flat(group, name, (size,), np.int64)))
            else:
                write_small_array(group, name, np.zeros(0, np.int64))
                splits.append(None)
        with tqdm(total=cfg.num_nodes, desc="synth: labels, splits", unit="node",
                  unit_scale=True, disable=not cfg.progress) as bar:
            for a in range(0, cfg.num_nodes, NODE_CHUNK):
                b = min(a + NODE_CHUNK, cfg.num_nodes)
                labels.write(node_labels(cfg, a, b))
                codes = split_codes(cfg, a, b)
                for k, writer in enumerate(splits):
                    if writer is not None:
                        writer.write(np.flatnonzero(codes == k) + a)
                bar.update(b - a)
        written = [w.nbytes // 8 if w is not None else 0 for w in splits]
        assert written == list(sizes), (written, sizes)
