"""Training batches read from object storage: bytes and requests per batch, and whether the
loader's prefetch window hides the requests' latency (issue 29, goal "Benchmarks").

Usage: python scripts/bench_remote.py [--setting default|tiny] [--windows 1,4,8,16]
           [--latency-ms 50] [--chunk-bytes 256K] [--shard-bytes 8M] [--repeats 3]
           [--no-train] [--workdir /tmp/s3bench] [--out remote.json] [--plot remote.png]

Builds a synthetic dataset (``disktrain.ingest.synth``), prepares it (node classification, one
epoch of batches, no cache tiers: every input row is packed), starts moto's S3 server on
127.0.0.1 in a child process (``tests/objstore.py``'s ``S3Server``, out of this process so that
it does not take the loader's GIL; with the ``dev`` extra) with two of that file's
``LatencyProxy`` in front of it, one adding nothing and one holding every request
``--latency-ms``, and publishes the dataset there. Then, per setting, a ``PackedLoader`` reads
every batch of the epoch (reading and assembly, no model): ``cold`` (the first epoch of a
freshly staged copy: sample groups and labels fetched on first use, as a new node's first
epoch), ``warm`` (the same again, ``--repeats`` times: the median run) and ``train`` (the
same with a small GraphSAGE step per batch, forward, backward and Adam, as a trainer overlaps
it; skipped with ``--no-train``):
  local      the prepared directory itself (local disk; the loader's defaults);
  s3         a fresh stage of the published prefix through the proxy adding nothing, with
             ``LoaderConfig.remote_window`` = each of ``--windows`` (read threads and queue
             depth = the window; window 1 also sets ``read_threads`` = ``prefetch`` = 1, so
             one request at a time);
  s3+lat     the same through the proxy adding ``--latency-ms`` per request (run right
             after s3 at the same window, so that both see about the same machine load).
Per epoch: seconds, batches, packed-row bytes fetched (``RemoteFiles.bytes`` over the epoch;
the shard indexes read when the store opens are reported apart, ``open``), packed-row
requests (``RemoteFiles.requests``, one GET per shard file a batch spans) and every HTTP
request the proxy saw (labels, sample groups fetched on first use too), each per batch.
Bytes needed: the batches' packed chunks' data (padded rows x row bytes, what the loader asks
for) and their real rows (``batch_packed``); ``fetched_over_needed`` (goal <= 1.05) is over the
padded data, ``fetched_over_real`` over the real rows. ``chunk_sweep`` gives both ratios for
other ``--chunk-bytes`` from the layout (a batch = ceil(real rows / chunk rows) chunks of
``round_up(chunk data + 4 B crc, 4 KiB)`` bytes each: :mod:`disktrain.storage.shards`); at
the prepared chunk size it equals what was measured. The goals are judged on the warm epoch
at ``LoaderConfig``'s default window: fetched/needed <= 1.05, packed-row requests per batch
<= 2, and ``latency_ratio`` = s3+lat epoch / s3 epoch <= 1.2 (given for every window).

moto serves a ranged GET by copying the whole object (``moto/s3/responses.py``
``_handle_range_header`` slices the full body), so a 1 GiB shard file (``PackConfig``'s
default) would cost the server far more per request than S3 does: the dataset is prepared
with ``--shard-bytes`` (default 8 MiB) shard files (measured here, through the proxy: a
256 KiB ranged GET took 4.4 ms from a 2 MiB object, 6.0 ms from 8 MiB, 62 ms from 64 MiB).
Settings: ``default`` 20,000 nodes, 128-d float32 rows (512 B), batches of 32 seeds, fanouts
5,5: 375 batches and about 190 MB of packed chunks an epoch (about 1.7x their real rows: a
batch's 400-700 rows pad to whole 512-row chunks), about 6 minutes on 2 shared cores;
``tiny`` (the test's) 1,200 nodes, 16-d, seconds. The JSON goes to ``--out``, the plot (epoch
seconds against the window, with and without latency, the local epoch as a line) to
``--plot``. Everything it writes (the dataset,
moto's spill files, the stages) lies in a temporary directory under ``--workdir``, removed at
the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
TESTS = SCRIPTS.parent / "tests"
sys.path.insert(0, str(SCRIPTS))
from _benchlib import parse_bytes, write_json

GOALS = {"fetched_over_needed": 1.05, "requests_per_batch": 2.0, "latency_ratio": 1.2}
PASSES = ("cold", "warm", "train")


@dataclasses.dataclass(frozen=True)
class Setting:
    nodes: int
    feature_dim: int
    batch_size: int
    fanouts: tuple[int, ...]
    avg_degree: float = 10.0


SETTINGS = {"default": Setting(nodes=20_000, feature_dim=128, batch_size=32, fanouts=(5, 5)),
            "tiny": Setting(nodes=1_200, feature_dim=16, batch_size=32, fanouts=(3, 3))}


def parse_args(argv=None) -> argparse.Namespace:
    from disktrain.pack import PackConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=SETTINGS, default="default")
    ap.add_argument("--windows", default="1,4,8,16", help="remote_window values, e.g. 1,4,8")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="added to every request")
    ap.add_argument("--chunk-bytes", type=parse_bytes, default=PackConfig.chunk_bytes)
    ap.add_argument("--shard-bytes", type=parse_bytes, default=8 << 20,
                    help="shard files of packed rows (moto copies a whole object per GET)")
    ap.add_argument("--no-train", action="store_true", help="skip the epoch with a model")
    ap.add_argument("--repeats", type=int, default=3, help="warm epochs per setting (median)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/s3bench"))
    ap.add_argument("--out", type=Path, help="the JSON result")
    ap.add_argument("--plot", type=Path, help="epoch seconds against the window (.png)")
    args = ap.parse_args(argv)
    try:
        args.windows = sorted({int(w) for w in args.windows.split(",")})
    except ValueError:
        ap.error(f"--windows: expected integers like 1,4,8, got {args.windows!r}")
    if min(args.windows) < 1 or args.latency_ms < 0 or args.repeats < 1:
        ap.error(f"--windows and --repeats must be >= 1 and --latency-ms >= 0, got "
                 f"{args.windows}, {args.repeats}, {args.latency_ms}")
    return args


# ---------------------------------------------------------------- the object store


def _serve(conn, delay_s: float, spill: str) -> None:
    """In a child process: moto's S3 server, a bucket, and proxies adding 0 and ``delay_s``;
    answers "counts" (requests each proxy saw) until "stop"."""
    sys.path.insert(0, str(TESTS))
    tempfile.tempdir = spill  # moto spills large objects to temporary files
    from objstore import LatencyProxy, S3Server

    with S3Server() as server, LatencyProxy(server.endpoint, 0.0) as plain, \
            LatencyProxy(server.endpoint, delay_s) as slow:
        conn.send({"env": server.env(), "bucket": server.new_bucket(),
                   "endpoints": {"s3": plain.endpoint, "s3+lat": slow.endpoint}})
        while conn.recv() == "counts":
            conn.send({"s3": plain.requests, "s3+lat": slow.requests})


class ObjectStore:
    """:func:`_serve` in a spawned child; ``env(name)``: a client's environment through proxy
    ``name``; ``requests(name)``: the requests it has seen."""

    def __init__(self, delay_s: float, spill: Path):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, delay_s, str(spill)), daemon=True)
        self.proc.start()
        if self.conn not in multiprocessing.connection.wait([self.conn, self.proc.sentinel], 120):
            self.close()
            raise RuntimeError(f"the S3 server did not start (exit code {self.proc.exitcode})")
        info = self.conn.recv()
        self.bucket, self.endpoints, self._env = info["bucket"], info["endpoints"], info["env"]

    def env(self, name: str | None = None) -> dict[str, str]:
        return {**self._env, **({"AWS_ENDPOINT_URL": self.endpoints[name]} if name else {})}

    def requests(self, name: str) -> int:
        self.conn.send("counts")
        return self.conn.recv()[name]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


@contextlib.contextmanager
def environ(env: dict[str, str]):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- the dataset and its bytes


def build(args, setting: Setting, data: Path) -> dict:
    """Synthesize and prepare the dataset at ``data``; seconds taken."""
    from disktrain.ingest.synth import SynthConfig, synthesize
    from disktrain.pack import PackConfig
    from disktrain.pack.prepare import prepare_dataset
    from disktrain.sample import SampleConfig

    t = time.perf_counter()
    synthesize(SynthConfig(out=data, num_nodes=setting.nodes, avg_degree=setting.avg_degree,
                           feature_dim=setting.feature_dim, progress=False))
    t1 = time.perf_counter()
    prepare_dataset(data, SampleConfig(fanouts=setting.fanouts, batch_size=setting.batch_size),
                    PackConfig(chunk_bytes=args.chunk_bytes, shard_bytes=args.shard_bytes),
                    evaluation=False, progress=False)
    return {"synth_s": t1 - t, "prepare_s": time.perf_counter() - t1}


def chunk_layout(real_rows: np.ndarray, row_bytes: int, chunk_bytes: int) -> dict:
    """Bytes an epoch of batches with ``real_rows`` packed rows each fetches and needs, packed
    in chunks of about ``chunk_bytes`` (as the packer and :class:`ShardLayout` lay them out)."""
    from disktrain.pack.tiers import rows_for_bytes
    from disktrain.storage.chunkfile import CRC_BYTES
    from disktrain.storage.io import round_up

    chunk_rows = max(1, rows_for_bytes(chunk_bytes, row_bytes))
    chunks = int((-(-real_rows // chunk_rows)).sum())
    data = chunk_rows * row_bytes
    fetched, padded = chunks * round_up(data + CRC_BYTES), chunks * data
    real = int(real_rows.sum()) * row_bytes
    return {"chunk_bytes": chunk_bytes, "chunk_rows": chunk_rows, "fetched_bytes": fetched,
            "needed_bytes": padded, "real_bytes": real,
            "fetched_over_needed": fetched / padded, "fetched_over_real": fetched / real}


def needed(data: Path, chunk_bytes: int) -> dict:
    """What an epoch of the prepared store at ``data`` needs, and the chunk-size sweep."""
    from disktrain.pack.store import PackedStore

    store = PackedStore(data)
    row_bytes = store.feature_dim * store.dtype.itemsize
    padded = np.diff(store.batch_rows)
    sweep = [chunk_layout(store.batch_packed, row_bytes, c << 10)
             for c in (16, 32, 64, 128, 256, 512, 1024)]
    return {"batches": store.num_batches, "row_bytes": row_bytes,
            "chunk_rows": int(store.chunk_rows), "chunk_stride": int(store.chunk_stride),
            "shard_files": store.layout.num_shards,
            "needed_bytes": int(padded.sum()) * row_bytes,
            "real_bytes": int(store.batch_packed.sum()) * row_bytes,
            "chunk_data_bytes": int(store.chunk_rows) * row_bytes,
            "layout": chunk_layout(store.batch_packed, row_bytes, chunk_bytes),
            "chunk_sweep": sweep}


# ---------------------------------------------------------------- epochs


def model_step(loader, layers: int):
    """A GraphSAGE training step per batch (hidden 64, Adam), as a trainer runs one."""
    import torch

    from disktrain.models.gnn import GNNConfig, build_model

    model = build_model(GNNConfig(in_dim=loader.packed.feature_dim, hidden=64,
                                  num_classes=int(loader.labels.max()) + 1,
                                  num_layers=layers))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step(mb) -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(mb.x, mb.blocks), mb.labels).backward()
        opt.step()
    return step


def epoch(loader, files, count, step=None) -> dict:
    """Every batch of ``loader`` once (each through ``step``); seconds, batches, and the
    packed-row requests and bytes (``files``, a ``RemoteFiles`` or None) and HTTP requests
    (``count()``) over the epoch."""
    (r0, b0), h0 = (files.requests, files.bytes) if files else (0, 0), count()
    t = time.perf_counter()
    n = 0
    with contextlib.closing(loader(range(loader.num_batches))) as batches:
        for mb in batches:
            if step is not None:
                step(mb)
            n += 1
    seconds = time.perf_counter() - t
    out = {"seconds": seconds, "batches": n, "http_requests": count() - h0}
    if files:
        out.update(requests=files.requests - r0, fetched_bytes=files.bytes - b0)
        out.update(requests_per_batch=out["requests"] / n,
                   http_requests_per_batch=out["http_requests"] / n)
    return out


def measure(args, name: str, window: int | None, path: Path, count,
            stage_at: Path | None = None, url: str | None = None) -> dict:
    """Setting ``name``: stage ``url`` under ``stage_at`` (none: read ``path`` itself), open a
    loader with ``window`` (None: the defaults) and time its epochs (the warm one
    ``args.repeats`` times: the median run, every run's seconds); the stage is removed."""
    from disktrain.loader.config import LoaderConfig
    from disktrain.loader.pipeline import PackedLoader
    from disktrain.storage.remote import stage

    cfg = (LoaderConfig() if window is None else LoaderConfig(
        remote_window=window, **({"read_threads": 1, "prefetch": 1} if window == 1 else {})))
    h0, t = count(), time.perf_counter()
    try:
        if url is not None:
            path = stage(url, stage_at)
        t1 = time.perf_counter()
        loader = PackedLoader(path, cfg)
        files = loader.packed.remote_files
        rec = {"setting": name, "window": window, "stage_s": t1 - t,
               "open_s": time.perf_counter() - t1, "open_http_requests": count() - h0,
               "open": {"requests": files.requests, "fetched_bytes": files.bytes}
               if files else None, "epochs": {}}
        step = None if args.no_train else model_step(loader, args.layers)
        try:
            for kind in PASSES[:2] if args.no_train else PASSES:
                runs = [epoch(loader, files, count, step if kind == "train" else None)
                        for _ in range(args.repeats if kind == "warm" else 1)]
                rec["epochs"][kind] = {**sorted(runs, key=lambda e: e["seconds"])[
                    len(runs) // 2], "seconds_all": [e["seconds"] for e in runs]}
        finally:
            loader.close()
    finally:
        if stage_at is not None:
            shutil.rmtree(stage_at, ignore_errors=True)
    print(f"bench_remote: {name} window {window}: " + ", ".join(
        f"{k} {e['seconds']:.2f} s" for k, e in rec["epochs"].items()), file=sys.stderr)
    return rec


# ---------------------------------------------------------------- summary


def summarize(runs: list[dict], need: dict, chosen: int) -> dict:
    """Per window and epoch kind: the s3 and s3+lat seconds and their ratio; per s3 run the
    warm epoch's bytes and requests against what was needed; the goals, at window
    ``chosen``."""
    local = next(r for r in runs if r["setting"] == "local")["epochs"]
    by = {(r["setting"], r["window"]): r["epochs"] for r in runs}
    windows = sorted(w for s, w in by if s == "s3")
    table = []
    for w in windows:
        row = {"window": w}
        for kind, plain in by[("s3", w)].items():
            slow = by[("s3+lat", w)][kind]["seconds"]
            row[kind] = {"local_s": local[kind]["seconds"], "s3_s": plain["seconds"],
                         "s3_lat_s": slow, "latency_ratio": slow / plain["seconds"],
                         "s3_over_local": plain["seconds"] / local[kind]["seconds"]}
        table.append(row)
    reads = [{"setting": s, "window": w,
              "fetched_over_needed": e["warm"]["fetched_bytes"] / need["needed_bytes"],
              "fetched_over_real": e["warm"]["fetched_bytes"] / need["real_bytes"],
              "requests_per_batch": e["warm"]["requests_per_batch"],
              "http_requests_per_batch": {k: e[k]["http_requests_per_batch"] for k in e}}
             for (s, w), e in by.items() if s != "local"]
    at = next(r for r in reads if (r["setting"], r["window"]) == ("s3", chosen))
    ratio = next(r for r in table if r["window"] == chosen)["warm"]["latency_ratio"]
    hides = [r["window"] for r in table if r["warm"]["latency_ratio"] <= GOALS["latency_ratio"]]
    goals = {k: {"value": v, "goal": GOALS[k], "met": v <= GOALS[k]} for k, v in (
        ("fetched_over_needed", at["fetched_over_needed"]),
        ("requests_per_batch", at["requests_per_batch"]), ("latency_ratio", ratio))}
    return {"window": chosen, "by_window": table, "reads": reads, "goals": goals,
            "smallest_window_hiding_latency": min(hides, default=None)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["summary"]["by_window"]
    windows = [r["window"] for r in table]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for kind, style in (("warm", "-"), ("train", ":")):
        if kind not in table[0]:
            continue
        for key, label, color in (("s3_s", "S3 (moto)", "C0"),
                                  ("s3_lat_s", f"S3 + {result['latency_ms']:g} ms", "C1")):
            ax.plot(windows, [r[kind][key] for r in table], style, marker="o", color=color,
                    label=f"{label}, {'read only' if kind == 'warm' else 'with a model'}")
        ax.axhline(table[0][kind]["local_s"], color="gray", ls=style,
                   label=f"local disk, {'read only' if kind == 'warm' else 'with a model'}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(windows, [str(w) for w in windows])
    ax.set_xlabel("prefetch window (remote_window: batches read at once)")
    ax.set_ylabel("epoch seconds")
    ax.set_ylim(bottom=0)
    n = result["needed"]
    ax.set_title(f"warm epochs: {n['batches']} batches, {n['needed_bytes'] / 1e6:.0f} MB of "
                 "packed chunks each", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from disktrain.loader.config import LoaderConfig
    from disktrain.storage.remote import publish

    args = parse_args(argv)
    setting = SETTINGS[args.setting]
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_remote-", dir=args.workdir))
    store = None
    try:
        data, args.layers = work / "data", len(setting.fanouts)
        result = {"benchmark": "remote", "command": shlex.join(
                      [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)]),
                  "machine": {"cores": os.cpu_count()}, "setting": args.setting,
                  "scale": dataclasses.asdict(setting), "latency_ms": args.latency_ms,
                  "chunk_bytes": args.chunk_bytes, "shard_bytes": args.shard_bytes,
                  "build": build(args, setting, data)}
        result["needed"] = needed(data, args.chunk_bytes)
        runs = [measure(args, "local", None, data, lambda: 0)]
        (work / "spill").mkdir()
        store = ObjectStore(args.latency_ms / 1000, work / "spill")
        url = f"s3://{store.bucket}/ds"
        with environ(store.env()):
            t = time.perf_counter()
            publish(data, url)
            result["publish_s"] = time.perf_counter() - t
        for w in args.windows:  # with and without latency one after the other: the same load
            for name in ("s3", "s3+lat"):
                with environ(store.env(name)):
                    runs.append(measure(args, name, w, data, lambda n=name: store.requests(n),
                                        work / "stage", url))
        result["runs"] = runs
        default = LoaderConfig.remote_window
        result["summary"] = summarize(runs, result["needed"],
                                      default if default in args.windows else args.windows[-1])
        if args.plot:
            plot(result, args.plot)
            result["plot"] = str(args.plot)
        write_json(result, args.out)
        print(json.dumps({"needed": {k: v for k, v in result["needed"].items()
                                     if k != "chunk_sweep"}, **result["summary"]}, indent=1))
        return 0
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
