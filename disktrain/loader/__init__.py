"""The data path at training time: the public :class:`Loader`, its batch type and blocks, the
read -> assemble -> copy stages, device assembly, and which batches each epoch and rank get."""

from disktrain.loader.batch import Batch, MiniBatch
from disktrain.loader.block import Block
from disktrain.loader.config import LoaderConfig
from disktrain.loader.loader import Loader
from disktrain.loader.pipeline import PackedLoader

__all__ = ["Batch", "Block", "Loader", "LoaderConfig", "MiniBatch", "PackedLoader"]
