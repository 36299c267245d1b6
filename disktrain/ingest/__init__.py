"""Ways into a dataset: edge/feature files, OGB's layout, in-memory PyG data, and synthetic
R-MAT graphs; the out-of-core CSR build they share."""

from disktrain.ingest.importers import from_pyg, ingest, read_ogb
from disktrain.ingest.inputs import IngestConfig
from disktrain.ingest.synth import SynthConfig, synthesize

__all__ = ["IngestConfig", "SynthConfig", "from_pyg", "ingest", "read_ogb", "synthesize"]
