"""Dataset loaders: hub or local rows of NLVR2, Smol2Operator (aguvis), PixMo-Count and
CountBenchQA turned into `Task`s through one code path, with bad rows skipped and counted.

    from boxgym.data.loaders import load_dataset_tasks
    result = load_dataset_tasks("nlvr2", path="~/data/nlvr2", split="validation", limit=100)
    result.tasks, result.skipped, result.skip_reasons

`datasets` is imported only when rows are read, so importing this package stays light.
"""

from __future__ import annotations

from boxgym.data.loaders.aguvis import AguvisActionError, aguvis_action_to_tool_call
from boxgym.data.loaders.cells import BadRow
from boxgym.data.loaders.common import (
    DatasetLoader,
    DatasetSourceError,
    LoadResult,
    get_loader,
    iter_dataset_tasks,
    load_dataset_tasks,
)
from boxgym.data.loaders.manifest import (
    ManifestError,
    cache_dataset,
    verify_manifest,
    write_manifest,
)
from boxgym.data.loaders.registry import DATASET_LOADERS

__all__ = [
    "DATASET_LOADERS",
    "AguvisActionError",
    "BadRow",
    "DatasetLoader",
    "DatasetSourceError",
    "LoadResult",
    "ManifestError",
    "aguvis_action_to_tool_call",
    "cache_dataset",
    "get_loader",
    "iter_dataset_tasks",
    "load_dataset_tasks",
    "verify_manifest",
    "write_manifest",
]
