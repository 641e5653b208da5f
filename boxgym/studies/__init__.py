"""Studies: one command per research question, each writing a table, a plot and a report.

`boxgym study NAME --model PATH|seeing --out DIR` runs one study through the shared runner
(`boxgym.studies.runner`); `boxgym study --list` lists them. Each study lives in its own module
and defines `STUDY`, a `boxgym.studies.base.Study`. This package stays light: modules are
imported only when a study is run.
"""

from __future__ import annotations

import importlib
from typing import Any

# study name -> module defining STUDY
STUDIES: dict[str, str] = {
    "patch-grid": "boxgym.studies.patch_grid",
    "resolution": "boxgym.studies.resolution",
    "rotation": "boxgym.studies.rotation",
    "presentation": "boxgym.studies.presentation",
    "information": "boxgym.studies.information",
    "image-information": "boxgym.studies.image_information",
    "probe": "boxgym.studies.probe",
    "learning-proof": "boxgym.studies.learning_proof",
    "boxing": "boxgym.studies.boxing",
    "marking": "boxgym.studies.marking",
}


def load_study(name: str) -> Any:
    """The `Study` called `name`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in STUDIES:
        raise ValueError(
            f"unknown study {name!r}; known: {', '.join(STUDIES)} (boxgym study --list)"
        )
    return importlib.import_module(STUDIES[name]).STUDY
