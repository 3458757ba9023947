#!/usr/bin/env bash
# The minimal wheel set that, added to a Python 3.12 environment with JAX or PyTorch (GPU builds) but
# no TensorFlow and no network, runs `featcache extract` (and benchmarks/bench_gpu.py) on a GPU.
#
#   bash benchmarks/gpu_wheelset.sh [--full] [--data N] [--out DIR]
#
# Builds featcache's own wheel (pip wheel --no-deps .) and downloads, for CPython 3.12 on manylinux
# x86-64, binary wheels only, the versions installed here of what a typical JAX/PyTorch GPU image lacks:
# keras and its small dependencies namex and optree (absl-py, numpy, rich, h5py, ml-dtypes, packaging,
# and featcache's scikit-learn, click, tqdm, pillow, joblib, matplotlib are in such images). --full adds
# featcache's and keras' other runtime dependencies (for an image that has only numpy and the framework);
# matplotlib (only `featcache report` needs it) is left out either way. The wheels' declared
# dependencies are checked: each must be in the set or in PRESENT below (override: PRESENT="..." bash ...).
# --data N also unpacks the first N JPEGs of ../shared/data/cifar10-jpg.tar.gz into benchmarks/gpu-data/
# (class folders) for bench_gpu.py's folder run on a machine without ../shared.
# Both folders are git-ignored (benchmarks/.gitignore). Install there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site benchmarks/wheels/*.whl
#   export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
OUT=benchmarks/wheels
FULL=0
DATA=0
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1 ;;
        --data) DATA=$2; shift ;;
        --out) OUT=$2; shift ;;
        *) echo "usage: $0 [--full] [--data N] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
# What the target image already has (the device image's list: /work/.library/device/KINDS.md).
PRESENT=${PRESENT:-"numpy h5py absl-py rich ml-dtypes packaging typing-extensions scikit-learn scipy joblib
threadpoolctl narwhals cloudpickle click tqdm pillow matplotlib markdown-it-py mdurl pygments jax jaxlib torch"}
NEEDED="keras namex optree"
if [ "$FULL" = 1 ]; then
    NEEDED="$NEEDED absl-py rich markdown-it-py mdurl pygments h5py ml-dtypes packaging typing-extensions
            scikit-learn scipy joblib threadpoolctl narwhals cloudpickle click tqdm pillow"
    PRESENT="numpy jax jaxlib torch matplotlib"
fi

rm -rf "$OUT" && mkdir -p "$OUT"
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" . 2>&1 | grep -v "^WARNING: Location" || true
# pin each to the version installed here (the CPU smoke run then tests the same versions)
PINS=$("$PYTHON" - $NEEDED <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
pins = []
for name in sys.argv[1:]:
    try:
        pins.append(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pins.append(name)
print(" ".join(pins))
EOF
)
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" $PINS 2>&1 | grep -v "^WARNING: Location" || true

# every declared dependency (Python 3.12, no extras) is in the set or already present
"$PYTHON" - "$OUT" $PRESENT <<'EOF'
import re, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
folder, present = Path(sys.argv[1]), {n.lower().replace("_", "-") for n in sys.argv[2:]}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
wheels = sorted(folder.glob("*.whl"))
have = {norm(w.name.split("-")[0]) for w in wheels}
missing, total = [], 0
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker and not req.marker.evaluate({"python_version": "3.12", "python_full_version": "3.12.3",
                                                           "extra": "", "sys_platform": "linux",
                                                           "platform_system": "Linux"}):
                    continue
                if norm(req.name) not in have | {norm(p) for p in present}:
                    missing.append(f"{wheel.name} needs {req}")
    size = wheel.stat().st_size
    total += size
    print(f"{size / 1e6:8.2f} MB  {wheel.name}")
print(f"{total / 1e6:8.2f} MB  in all ({len(wheels)} wheels, {folder})")
if missing:
    print("missing (neither in the set nor in PRESENT):\n  " + "\n  ".join(missing))
    sys.exit(1)
EOF

if [ "$DATA" -gt 0 ]; then
    ARCHIVE=../shared/data/cifar10-jpg.tar.gz
    [ -f "$ARCHIVE" ] || { echo "no $ARCHIVE: --data needs it" >&2; exit 1; }
    rm -rf benchmarks/gpu-data && mkdir -p benchmarks/gpu-data/cifar
    "$PYTHON" - "$ARCHIVE" "$DATA" <<'EOF'
import sys, tarfile
from pathlib import Path
archive, count, out = sys.argv[1], int(sys.argv[2]), Path("benchmarks/gpu-data/cifar")
per_class, written = {}, 0  # count // 10 of each of the 10 classes
with tarfile.open(archive) as tar:
    for member in tar:  # train/<class>/NNNN.jpg
        parts = member.name.split("/")
        if member.isfile() and member.name.endswith(".jpg") and "train" in parts:
            if per_class.get(parts[-2], 0) >= count // 10:
                continue
            per_class[parts[-2]] = per_class.get(parts[-2], 0) + 1
            target = out / parts[-2] / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            written += 1
            if written == count // 10 * 10:
                break
print(f"{written} JPEGs in {out} ({sum(p.stat().st_size for p in out.rglob('*.jpg')) / 1e6:.1f} MB)")
EOF
fi
