"""Launcher-agnostic training: the same function runs alone, under torchrun and Ray Train."""

from disktrain.train.config import OptimizerConfig, TrainConfig
from disktrain.train.evaluate import EvalConfig
from disktrain.train.loop import train

__all__ = ["EvalConfig", "OptimizerConfig", "TrainConfig", "train"]
