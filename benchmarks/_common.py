"""Helpers shared by the benchmark scripts: paths, the offline weights, memory, results files."""

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
RESULTS = Path(__file__).resolve().parent / "results"
if str(ROOT) not in sys.path:  # this checkout's featcache before any installed one
    sys.path.insert(0, str(ROOT))


def skip_unless(*paths):
    """Exit 0 with a message when a data folder or file the benchmark needs is absent."""
    for path in paths:
        if not Path(path).exists():
            print(f"skipped: {path} is absent (see {SHARED_DATA}/README.md)")
            sys.exit(0)


def offline_weights() -> Path:
    """Point KERAS_HOME at a copy of ../shared/data/keras (Keras writes keras.json there); return the weights file."""
    skip_unless(SHARED_DATA / "keras" / "models" / WEIGHTS_FILE)
    home = Path(os.environ.get("KERAS_HOME") or tempfile.mkdtemp(prefix="featcache-keras-"))
    if not (home / "models" / WEIGHTS_FILE).is_file():
        shutil.copytree(SHARED_DATA / "keras", home, dirs_exist_ok=True)
    os.environ["KERAS_HOME"] = str(home)
    return home / "models" / WEIGHTS_FILE


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def array_dataset(images, name="bench"):
    """A one-split (train) featcache Dataset over an in-memory uint8 array."""
    import numpy as np

    from featcache.datasets import ArrayImages, Dataset, Split

    labels = {"label": np.zeros(len(images), dtype=np.int64)}
    return Dataset(name, {"train": Split(ArrayImages(images), labels)}, {"label": ["x"]})


def cifar_like(n: int, seed: int = 0):
    """n random 32x32 RGB uint8 images."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def gpu_list() -> str | None:
    """``nvidia-smi -L``'s lines (the GPUs and their ids), or None without an NVIDIA driver."""
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, command: str, body: str, data: dict):
    """Write results/<name>.md (what, where, when, the command, the numbers) and results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    header = (f"# {title}\n\n- date: {info['date']}\n"
              f"- machine: {info['cpus']} CPU cores ({info['cpu']}), no GPU, shared with other jobs at the time "
              f"(load average at the end {', '.join(map(str, info['load_average']))})\n"
              f"- command: `{command}`\n\n")
    (RESULTS / f"{name}.md").write_text(header + body.strip() + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, **data}, indent=2) + "\n")
    print(f"wrote {RESULTS / name}.md and .json")
