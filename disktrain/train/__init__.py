"""Launcher-agnostic training: the same function runs alone, under torchrun and Ray Train.

``train`` and ``TrainConfig`` are imported on first use, so that the data path
(``disktrain.loader``) can use this package's schedule and fresh-epoch modules without
importing the training loop, which itself uses the loader.
"""

__all__ = ["TrainConfig", "train"]


def __getattr__(name: str):
    if name == "train":
        from disktrain.train.loop import train

        return train
    if name == "TrainConfig":
        from disktrain.train.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'disktrain.train' has no attribute {name!r}")
