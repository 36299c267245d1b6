"""`disktrain demo`: the whole data path on a small synthetic graph, end to end."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from disktrain.ingest.synth import SynthConfig, synthesize
from disktrain.models import ModelConfig
from disktrain.pack import PackConfig, pack_dataset
from disktrain.pack.prepare import prepare_eval
from disktrain.sample import SampleConfig, sample_dataset
from disktrain.train import TrainConfig, train
from disktrain.train.checkpoint import CheckpointConfig


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """The demo's few knobs."""

    out: Path | None = None
    """Keep the dataset here; default: a temporary directory deleted at the end."""
    num_nodes: int = 20_000
    """Nodes of the synthetic graph (average in-degree 10, 64 features, 8 classes)."""
    epochs: int = 3
    """Training epochs for each model."""
    progress: bool = True
    """Show progress bars."""


def _log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    """synth -> prepare -> train (GraphSAGE and an MLP baseline) -> a summary dict."""
    tmp = None if cfg.out else Path(tempfile.mkdtemp(prefix="disktrain-demo-"))
    path = Path(cfg.out) if cfg.out else tmp / "demo"
    times = {}
    try:
        t = time.perf_counter()
        _log(f"synthesizing {cfg.num_nodes} nodes into {path}")
        synthesize(SynthConfig(out=path, num_nodes=cfg.num_nodes, avg_degree=10,
                               feature_dim=64, num_classes=8, seed=0, overwrite=True,
                               progress=cfg.progress))
        times["synth_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _log("prepare: offline sampling (fanouts 10,10, batch 512) and packing; each further "
             "epoch is prepared afresh while the one before trains")
        sample_dataset(path, SampleConfig(fanouts=(10, 10), batch_size=512, epochs=1, seed=0),
                       progress=cfg.progress)
        row_bytes = 64 * 4
        packed = pack_dataset(path, PackConfig(gpu_cache_bytes=cfg.num_nodes // 20 * row_bytes,
                                               cpu_cache_bytes=cfg.num_nodes // 10 * row_bytes),
                              progress=cfg.progress)
        prepare_eval(path, progress=cfg.progress)  # val and test, packed once
        times["prepare_s"] = time.perf_counter() - t
        results = {}
        for model in ("sage", "mlp"):
            t = time.perf_counter()
            _log(f"training {model} for {cfg.epochs} epochs")
            ckpt = CheckpointConfig(dir=str(path / f"ckpt-{model}"))
            results[model] = train(TrainConfig(dataset=str(path),
                                               model=ModelConfig(model=model, hidden=64),
                                               epochs=cfg.epochs, seed=0, checkpoint=ckpt,
                                               progress=cfg.progress))
            times[f"train_{model}_s"] = time.perf_counter() - t
        info = packed.info()
        return {"dataset": str(path) if cfg.out else "temporary (deleted)",
                "nodes": cfg.num_nodes, "duplication_factor": info["duplication_factor"],
                "sage_test_acc": results["sage"]["test_acc"],
                "mlp_test_acc": results["mlp"]["test_acc"],
                "sage_epoch_time_s": results["sage"]["epoch_time_s"],
                "stage_s": results["sage"]["stage_s"],
                **{k: round(v, 2) for k, v in times.items()}}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
