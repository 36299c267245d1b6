"""Launcher-agnostic training: the same function runs alone, under torchrun and Ray Train."""

from disktrain.train.config import TrainConfig
from disktrain.train.loop import train

__all__ = ["TrainConfig", "train"]
