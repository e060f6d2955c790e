"""Where things are: the bundled model files and the third-party data folder.

The bundled models ship with the `model` package (model/examples/*.npz, package data); they are named
here by path only, so nothing below the model layer has to import it.  The third-party data lives
in ../shared/data next to the checkout (present in CI, never copied into the repository);
$DPFPGA_SHARED_DATA points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODELS = REPO / "model" / "examples"
#: The bundled GeTe model: the default of every command that takes a model.
EXAMPLE_MODEL = BUNDLED_MODELS / "GeTe-example.npz"
#: Every bundled model by material.
MODELS = {"GeTe": EXAMPLE_MODEL, "Sb": BUNDLED_MODELS / "Sb-7net-0.npz", "GST": BUNDLED_MODELS / "GST-mace.npz"}


def shared_data() -> Path:
    """$DPFPGA_SHARED_DATA, else ../shared/data next to the checkout (it may not exist: callers skip
    or say so, naming this path)."""
    env = os.environ.get("DPFPGA_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


#: The seed's GeTe AIMD melt-quench frames (DeePMD npy), inside shared_data().
GETE_AIMD = Path("GeTe-aimd") / "216atom-melt-quench"

#: The generated C/C++ headers (contract/headers.py), package data of `contract`: `-I` this folder and
#: `#include "dpfpga/wire.h"`.
INCLUDE_DIR = Path(__file__).resolve().parent / "include"
