"""The dataset registry: name -> `DatasetLoader` (hub repo, default split, row converter)."""

from __future__ import annotations

from boxgym.data.loaders import aguvis, countbench, nlvr2, pixmo_count
from boxgym.data.loaders.common import DatasetLoader

DATASET_LOADERS: dict[str, DatasetLoader] = {
    "nlvr2": nlvr2.LOADER,
    "aguvis-stage-1": aguvis.LOADERS["aguvis-stage-1"],
    "aguvis-stage-2": aguvis.LOADERS["aguvis-stage-2"],
    "pixmo-count": pixmo_count.LOADER,
    "countbench": countbench.LOADER,
}
