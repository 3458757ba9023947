"""GPU extraction throughput from the wheel set: ResNet50 at 224 px, float32 vs mixed, XLA on vs off, per backend.

Meant for the device machine (a JAX/PyTorch GPU image without TensorFlow), with featcache and keras
installed from ``benchmarks/wheels`` (``benchmarks/gpu_wheelset.sh``); see ``benchmarks/results/gpu.md``
for the exact command. Each cell (backend x precision x XLA) runs in its own subprocess
(KERAS_BACKEND=jax or torch) with a time limit, and measures, with the settings given explicitly:

    bare     ``images.forward`` of one compiled ``feature_model`` on ONE float32 batch of CIFAR-size
             (32x32) images already in memory, called repeatedly (its first call timed apart)
    arrays   ``featcache.extract.extract`` on ``--images`` CIFAR-size uint8 arrays in memory
    folder   ``featcache.extract.extract`` on as many CIFAR JPEG files (``--jpeg-dir``; default
             benchmarks/gpu-data/cifar from gpu_wheelset.sh --data, else ../shared/data's archive, else
             JPEGs written here), decoded by the host threads

"as run" rates are extract's own ``images_per_second`` (a fresh model: its first call included);
"steady" takes out the first call of a second fresh model of the same cell (``first_call_s``:
trace/compile as extract pays it, after the process-wide start-up). JAX gets a persistent compilation
cache in the output's temporary folder so that a model compiled once is loaded, not compiled again,
by later models of the same shapes. Writes ``gpu.json`` and ``gpu.md`` to ``--out``.

    python3 benchmarks/bench_gpu.py --out DIR [--backends jax,torch] [--images 4096] [--batch 128]
    python3 benchmarks/bench_gpu.py --smoke --out /tmp/gpu-smoke     # CPU: MobileNetV2 0.35 at 32 px, 128 images
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import gpu_list

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SETTINGS = [("float32", False), ("mixed", False), ("float32", True), ("mixed", True)]  # the order run
CLASSES = 10


# --- one cell, in its own subprocess -------------------------------------------------------------


def folder_dataset(jpeg_dir: Path, count: int):
    """``count`` JPEGs of the class folders under ``jpeg_dir`` (round robin over the classes) as a dataset."""
    import numpy as np

    from featcache.datasets import Dataset, FileImages, Split

    classes = sorted(d.name for d in jpeg_dir.iterdir() if d.is_dir())
    per_class = [sorted((jpeg_dir / c).glob("*.jpg")) for c in classes]
    paths, labels = [], []
    for i in range(max(map(len, per_class))):
        for label, files in enumerate(per_class):
            if i < len(files) and len(paths) < count:
                paths.append(files[i])
                labels.append(label)
    return Dataset("folder:bench", {"train": Split(FileImages(paths), {"label": np.array(labels)})},
                   {"label": classes})


def cell(args):
    import numpy as np

    from featcache.backbones import make_spec
    from featcache.backend import gpu_names, keras
    from featcache.compute import Compute
    from featcache.datasets import ArrayImages, Dataset, Split
    from featcache.extract import extract
    from featcache.images import feature_model, forward

    precision, xla = args.precision, args.xla == "on"
    settings = Compute(keras.backend.backend(), precision, xla)
    spec = make_spec(args.backbone, args.size, "avg", "none", json.loads(args.options))
    out = {"backend": settings.backend, "precision": precision, "xla": xla, "gpu": gpu_names(),
           "batch": args.batch, "images": args.images}
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (args.batch, 32, 32, 3)).astype(np.float32)

    def first_and_step(model):
        run = forward(model, args.batch)
        started = time.perf_counter()
        run(batch)
        first = time.perf_counter() - started
        steps = []
        for _ in range(3):  # warm-up calls (autotuning, allocator); the fastest is the step
            started = time.perf_counter()
            run(batch)
            steps.append(time.perf_counter() - started)
        return run, first, min(steps)

    run, out["first_model_first_call_s"], step = first_and_step(feature_model(spec, settings))
    steps = max(3, min(50, round(args.seconds / step)))
    started = time.perf_counter()
    for _ in range(steps):
        run(batch)
    out["bare"] = steps * args.batch / (time.perf_counter() - started)
    _, first, step = first_and_step(feature_model(spec, settings))
    out["first_call_s"] = max(first - step, 0.0)
    log = lambda what: print(f"  [{settings.backend} {precision} xla={xla}] {what}", file=sys.stderr, flush=True)
    log(f"bare {out['bare']:.0f} images/s, first call {out['first_call_s']:.2f} s")

    arrays = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    sources = {
        "arrays": Dataset("arrays", {"train": Split(ArrayImages(arrays), {"label": np.arange(args.images) % 2})},
                          {"label": ["a", "b"]}),
        "folder": folder_dataset(Path(args.jpeg_dir), args.images),
    }
    for name, dataset in sources.items():
        with tempfile.TemporaryDirectory(prefix="featcache-gpu-") as root:
            result = extract(dataset, spec, root, batch_size=args.batch, force=True, progress=False,
                             precision=precision, xla=xla)
        n = sum(result.rows.values())
        steady_seconds = result.seconds - out["first_call_s"]
        out[name] = {"images": n, "rate": result.images_per_second, "seconds": result.seconds,
                     "over_bare": result.images_per_second / out["bare"],
                     "steady_rate": n / steady_seconds if steady_seconds > 0 else None}
        if out[name]["steady_rate"]:
            out[name]["steady_over_bare"] = out[name]["steady_rate"] / out["bare"]
        log(f"{name}: {result.images_per_second:.0f} images/s as run, "
            f"{out[name]['steady_rate'] or float('nan'):.0f} steady")
    print("RESULT " + json.dumps(out), flush=True)


# --- the driver ------------------------------------------------------------------------------------


def jpeg_folder(args, tmp: Path) -> Path:
    """A folder of CIFAR JPEGs in class folders: the one given, the wheel set's, ../shared's, or written here."""
    if args.jpeg_dir:
        return Path(args.jpeg_dir)
    if (HERE / "gpu-data" / "cifar").is_dir():
        return HERE / "gpu-data" / "cifar"
    folder = tmp / "jpegs"
    archive = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
    if archive.is_file():
        import tarfile

        counts = {}
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = member.name.split("/")
                if member.isfile() and member.name.endswith(".jpg") and counts.get(parts[-2], 0) * CLASSES < args.images:
                    counts[parts[-2]] = counts.get(parts[-2], 0) + 1
                    (folder / parts[-2]).mkdir(parents=True, exist_ok=True)
                    (folder / parts[-2] / parts[-1]).write_bytes(tar.extractfile(member).read())
                if sum(counts.values()) >= args.images and len(counts) >= CLASSES:
                    break
        return folder
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(args.images):
        (folder / f"c{i % CLASSES}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"c{i % CLASSES}" / f"{i}.jpg")
    return folder


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("featcache", "keras", "jax", "jaxlib", "torch", "numpy", "pillow", "tensorflow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["gpus"] = gpu_list()
    return found


def markdown(data) -> str:
    rows = []
    for c in data["cells"]:
        if "error" in c:
            rows.append(f"| {c['backend']} | {c['precision']} | {'on' if c['xla'] else 'off'} | {c['error']} |"
                        " | | | | |")
            continue
        a, f = c["arrays"], c["folder"]
        fmt = lambda x, spec: "n/a" if x is None else format(x, spec)
        rows.append(f"| {c['backend']} | {c['precision']} | {'on' if c['xla'] else 'off'} | {c['bare']:.0f} | "
                    f"{a['rate']:.0f} / {fmt(a['steady_rate'], '.0f')} | "
                    f"{a['over_bare']:.2f}x / {fmt(a.get('steady_over_bare'), '.2f')}{'x' if a.get('steady_over_bare') else ''} | "
                    f"{f['rate']:.0f} / {fmt(f['steady_rate'], '.0f')} | "
                    f"{f['over_bare']:.2f}x / {fmt(f.get('steady_over_bare'), '.2f')}{'x' if f.get('steady_over_bare') else ''} | "
                    f"{c['first_call_s']:.1f} |")
    v = data["versions"]
    return (f"# GPU extraction throughput ({'smoke run on CPU' if data['smoke'] else v.get('gpus') or 'no GPU found'})\n\n"
            f"- date: {data['date']}\n- machine: {v.get('gpus') or 'no GPU'}; {os.cpu_count()} CPU cores; "
            f"load average at the end {', '.join(format(x, '.2f') for x in os.getloadavg())}\n"
            f"- versions: {', '.join(f'{k} {w}' for k, w in v.items() if k != 'gpus' and w)}\n"
            f"- command: `{data['command']}`\n\n"
            f"{data['backbone']} at {data['size']} px, random weights, avg pooling, batch {data['batch']}, "
            f"{data['images']} CIFAR-size (32x32) images per source (uint8 arrays in memory; JPEG files from "
            f"`{data['jpeg_dir']}`), float32 features. Images/s as run / steady (see the docstring of "
            f"`benchmarks/bench_gpu.py`); ratios to the bare forward pass of the same cell.\n\n"
            "| backend | precision | XLA | bare images/s | arrays images/s | arrays / bare | folder images/s | "
            "folder / bare | first call s |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def run_cell(args, env, out, backend, precision, xla, timeout) -> dict:
    """One backend x setting in its own subprocess, within --cell-timeout: its results, or why there are none."""
    base = {"backend": backend, "precision": precision, "xla": xla == "on"}
    call = [sys.executable, __file__, "--cell", "--precision", precision, "--xla", xla,
            "--backbone", args.backbone, "--size", str(args.size), "--options", args.options,
            "--images", str(args.images), "--batch", str(args.batch), "--seconds", str(args.seconds),
            "--jpeg-dir", args.jpeg_dir, "--out", str(out)]
    started = time.perf_counter()
    try:
        done = subprocess.run(call, env={**env, "KERAS_BACKEND": backend}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  over {timeout:.0f} s: left out", flush=True)
        return {**base, "error": f"not done in {timeout:.0f} s"}
    sys.stderr.write("".join(line + "\n" for line in done.stderr.splitlines() if line.startswith("  [")))
    line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
    if done.returncode or line is None:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        print(f"  failed: {last}", flush=True)
        return {**base, "error": f"failed (exit {done.returncode}): {last}"}
    return {**base, **json.loads(line[len("RESULT "):]), "cell_seconds": time.perf_counter() - started}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument("--backends", default="jax,torch")
    parser.add_argument("--settings", default=",".join(f"{p}:{'on' if x else 'off'}" for p, x in SETTINGS),
                        help="precision:xla pairs, in the order run")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--options", default="{}", help="backbone options as JSON")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long bare runs")
    parser.add_argument("--cell-timeout", type=int, default=150, help="seconds for one backend x setting")
    parser.add_argument("--budget", type=float, default=540,
                        help="seconds for all cells: later cells are left out (and said so) once it is spent")
    parser.add_argument("--jpeg-dir")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: MobileNetV2 0.35 at 32 px, 128 images")
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--xla", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        return cell(args)
    if args.smoke:
        args.backbone, args.size, args.options = "mobilenetv2", 32, '{"alpha": 0.35}'
        args.images, args.batch, args.seconds = min(args.images, 128), min(args.batch, 32), 1.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="featcache-gpu-bench-"))
    command = "python3 benchmarks/bench_gpu.py " + " ".join(sys.argv[1:])
    try:
        args.jpeg_dir = str(jpeg_folder(args, tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
               "KERAS_HOME": str(tmp / "keras"), "FEATCACHE_CACHE": str(tmp / "cache"),
               "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "PYTHONUNBUFFERED": "1"}
        cells, begun = [], time.perf_counter()
        for backend in args.backends.split(","):
            for setting in args.settings.split(","):
                precision, xla = setting.split(":")
                left = args.budget - (time.perf_counter() - begun)
                if left < 20:
                    cells.append({"backend": backend, "precision": precision, "xla": xla == "on",
                                  "error": f"not run: --budget {args.budget:.0f} s spent"})
                    continue
                print(f"{backend} {precision} xla={xla} ...", flush=True)
                cells.append(run_cell(args, env, out, backend, precision, xla, min(args.cell_timeout, left)))
                data = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "smoke": args.smoke,
                        "backbone": args.backbone + (f" {json.loads(args.options)}" if args.options != "{}" else ""),
                        "size": args.size, "batch": args.batch, "images": args.images, "jpeg_dir": args.jpeg_dir,
                        "versions": versions(), "load_average": os.getloadavg(), "cells": cells}
                # after every cell: a run stopped at its time limit keeps what it measured
                (out / "gpu.json").write_text(json.dumps(data, indent=2) + "\n")
                (out / "gpu.md").write_text(markdown(data))
        print(markdown(data))
        return 0 if all("error" not in c for c in cells) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
