"""How features are computed: the Keras backend, the precision and XLA compilation.

Each of them changes the features' last bits, so together they are part of the cache key (a cache
made one way is never served for another) and of the provenance that predict and export reuse.
Deciding them imports no Keras: a cached answer stays cheap.
"""

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from featcache.params import BOOLEAN, Options, validate

PRECISIONS = ("float32", "mixed")
RULES = {"precision": [Options(*PRECISIONS), None], "xla": [BOOLEAN, None]}


@dataclass(frozen=True)
class Compute:
    backend: str  # tensorflow, jax or torch
    precision: str = "float32"  # mixed: float16 compute on GPUs, bfloat16 on those of compute capability >= 8.0
    xla: bool = False  # jit_compile

    def to_record(self) -> dict:
        return asdict(self)


def backend_name() -> str:
    """The Keras backend this process will use, as Keras decides it ($KERAS_BACKEND, then keras.json)."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "keras.json"
    try:
        return json.loads(config.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def gpu_likely() -> bool:
    """An NVIDIA GPU is installed and not hidden (without importing a framework to ask)."""
    return shutil.which("nvidia-smi") is not None and os.environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")


def resolve(precision: str | None = None, xla: bool | None = None) -> Compute:
    """The settings to use: the ones given, else the fastest for the device found (mixed and XLA on a GPU)."""
    validate({"precision": precision, "xla": xla}, RULES)
    gpu = gpu_likely()
    return Compute(backend_name(), precision or ("mixed" if gpu else "float32"), gpu if xla is None else xla)
