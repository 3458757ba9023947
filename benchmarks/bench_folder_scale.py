"""A folder of 100,000 small JPEGs: the time to a cached answer, and the bytes a first extraction reads.

The benchmark writes ``--files`` 32x32 JPEGs (10 class folders, Pillow in threads) to a temporary
folder, then runs the CLI in subprocesses, each under a wrapper that records, at exit, the process's
/proc/self/io (read_bytes: bytes it made the kernel fetch from the block device), its wall time and
whether TensorFlow was imported:

    warm-up      one extraction over a tiny folder of 20 files: the libraries and Python modules
                 get into the page cache, so that later runs' read_bytes are the data's
    baseline     the same tiny extraction again (--force, its files evicted): what an extraction
                 reads besides a large dataset
    first        ``featcache extract --dataset folder:DIR --backbone mobilenetv2 --alpha 0.35
                 --input-size 32 --weights none`` with every image file evicted from the page cache
                 first (os.sync, then posix_fadvise(DONTNEED) on each file), over the first
                 ``--first-files`` files (default: all of them; a subset is a folder of its own)
    cached       the same command on the whole folder once its features are cached, ``--repeats``
                 times (the goal: under 5 s); the files are evicted before each, so nothing
                 from the first run helps it but the cache's own files

bytes read / folder size uses two sizes: the files' bytes (st_size) and what they occupy on
disk (st_blocks: a 1 kB file fills a 4 kB block, and the kernel reads whole blocks). Goal: at most
1.1 (each image read once).

    .venv/bin/python benchmarks/bench_folder_scale.py [--files 100000] [--first-files N] [--repeats 3] [--dir DIR]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, table, write_results

import numpy as np

CLASSES = 10
WRAPPER = """
import atexit, json, os, sys, time
started = time.perf_counter()
def report():
    fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    with open(os.environ["BENCH_IO_REPORT"], "w") as f:
        json.dump({"io": {k: int(v) for k, v in fields.items()}, "python_seconds": time.perf_counter() - started,
                   "tensorflow_imported": "tensorflow" in sys.modules}, f)
atexit.register(report)
sys.argv = ["featcache", *sys.argv[1:]]
from featcache.cli import main
main()
"""

BREAKDOWN = """
import json, os, sys, time
t = {}
started = time.perf_counter()
from featcache.datasets import load_dataset
t["import featcache.datasets"] = time.perf_counter() - started
started = time.perf_counter()
dataset = load_dataset("folder:" + sys.argv[1])
t["load_dataset (list the folder)"] = time.perf_counter() - started
started = time.perf_counter()
dataset.fingerprint
t["dataset.fingerprint (file index)"] = time.perf_counter() - started
started = time.perf_counter()  # the floor: one scandir per class folder, one stat per file, the index parsed
names = sorted(e.path for d in os.scandir(sys.argv[1]) if d.is_dir() for e in os.scandir(d.path)
               if e.name.lower().endswith(".jpg") and e.is_file())
stats = [os.stat(n) for n in names]
index = json.loads(open(os.path.join(os.environ["FEATCACHE_CACHE"], "file-index.json")).read())
hits = sum(1 for n, st in zip(names, stats) if n in index)
t["floor: scandir + stat + json (no featcache)"] = time.perf_counter() - started
print("BREAKDOWN " + json.dumps({"seconds": t, "files": len(names), "index_hits": hits}))
"""


def write_folder(root: Path, files: int) -> None:
    """``files`` 32x32 JPEGs, in CLASSES class folders: a class colour, a gradient and noise."""
    from PIL import Image

    yy, xx = np.mgrid[:32, :32]

    def write(index):
        rng = np.random.default_rng(index)
        label = index % CLASSES
        colour = np.array([(label * 25) % 256, (label * 80) % 256, (255 - label * 20) % 256])
        pixels = colour + (xx[..., None] + yy[..., None]) * 2 + rng.normal(0, 12, (32, 32, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(root / f"c{label}" / f"{index:06d}.jpg", quality=90)

    for label in range(CLASSES):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(files), chunksize=256))


def image_files(root: Path) -> list[Path]:
    return [p for d in sorted(root.iterdir()) for p in sorted(d.iterdir())]


def sizes(paths) -> tuple[int, int]:
    stats = [p.stat() for p in paths]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def evict(paths) -> None:
    """Drop the files' pages from the page cache (dirty pages are written back first)."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def featcache(args, env, wrapper: Path, report: Path) -> dict:
    """Run the CLI under the wrapper; its /proc/self/io at exit, wall time, exit status and output."""
    report.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(wrapper), *args], env={**env, "BENCH_IO_REPORT": str(report)},
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"featcache {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(report.read_text())
    return {**result, "wall_seconds": wall, "stdout": done.stdout.strip()[-500:]}


def subset(root: Path, target: Path, count: int) -> Path:
    """The first ``count`` files (round-robin over the classes) hard-linked into a folder of their own."""
    files = image_files(root)
    chosen = sorted(files, key=lambda p: int(p.stem))[:count]
    for path in chosen:
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(path, target / path.parent.name / path.name)
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--first-files", type=int, help="measure the first extraction on this many files only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="where the temporary folder goes (default: the system's temp folder)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="featcache-scale-", dir=args.dir))
    try:
        env = {**os.environ, "KERAS_HOME": str(tmp / "keras"), "PYTHONPATH": str(ROOT)}
        env.pop("KERAS_BACKEND", None)
        wrapper, report = tmp / "wrapper.py", tmp / "io.json"
        wrapper.write_text(WRAPPER)
        started = time.perf_counter()
        write_folder(tmp / "images", args.files)
        write_folder(tmp / "tiny", 20)
        made = time.perf_counter() - started
        files = image_files(tmp / "images")
        apparent, on_disk = sizes(files)
        print(f"{len(files)} files written in {made:.1f} s: {apparent / 1e6:.1f} MB ({on_disk / 1e6:.1f} MB on disk)",
              flush=True)
        common = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none"]

        def extract(folder, cache, *more):
            return featcache(["--cache-dir", str(tmp / cache), "extract", "--dataset", f"folder:{folder}",
                              *common, *more], env, wrapper, report)

        warmup = extract(tmp / "tiny", "cache-tiny")
        evict(image_files(tmp / "tiny"))
        baseline = extract(tmp / "tiny", "cache-tiny", "--force")
        first_folder = tmp / "images"
        if args.first_files and args.first_files < len(files):
            first_folder = subset(tmp / "images", tmp / "first", args.first_files)
        first_files = image_files(first_folder)
        first_apparent, first_on_disk = sizes(first_files)
        evict(first_files)
        print(f"first extraction of {len(first_files)} files (load {os.getloadavg()[0]:.2f}) ...", flush=True)
        load_first = os.getloadavg()
        first = extract(first_folder, "cache")
        print(f"  {first['wall_seconds']:.1f} s, read {first['io']['read_bytes'] / 1e6:.1f} MB", flush=True)
        if first_folder != tmp / "images":  # the cached answer is for the whole folder: extract it once
            print("extracting the whole folder for the cached answer ...", flush=True)
            whole = extract(tmp / "images", "cache")
        else:
            whole = first
        cached = []
        for r in range(args.repeats):
            evict(files)
            cached.append(extract(tmp / "images", "cache"))
            print(f"  cached answer {r + 1}: {cached[-1]['wall_seconds']:.2f} s, read "
                  f"{cached[-1]['io']['read_bytes'] / 1e6:.2f} MB, TensorFlow imported: "
                  f"{cached[-1]['tensorflow_imported']}", flush=True)
        # where the cached answer's time goes, in a fresh process as the CLI's (in-process timings)
        done = subprocess.run([sys.executable, "-c", BREAKDOWN, str(tmp / "images")], capture_output=True, text=True,
                              env={**env, "FEATCACHE_CACHE": str(tmp / "cache")})
        breakdown = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("BREAKDOWN "))[10:])
        print(f"  breakdown: {breakdown}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    read = first["io"]["read_bytes"]
    data_read = read - baseline["io"]["read_bytes"]
    cached_s = statistics.median(c["wall_seconds"] for c in cached)
    ratio_apparent, ratio_disk = read / first_apparent, read / first_on_disk
    cached_met, bytes_met = cached_s < 5, ratio_disk <= 1.1
    rows = [
        ("folder", f"{len(files):,} JPEGs of 32x32 in {CLASSES} classes, {apparent / 1e6:.1f} MB "
                   f"({apparent / len(files):.0f} B a file), {on_disk / 1e6:.1f} MB on disk; written in {made:.0f} s"),
        ("first extraction", f"{len(first_files):,} files{' (a subset: see below)' if first_folder != tmp / 'images' else ''}, "
                             f"{first['wall_seconds']:.1f} s wall ({len(first_files) / first['wall_seconds']:.0f} images/s "
                             f"end to end), load average before {load_first[0]:.2f}"),
        ("read_bytes, first extraction", f"{read / 1e6:.1f} MB (baseline extraction of 20 files: "
                                         f"{baseline['io']['read_bytes'] / 1e6:.2f} MB; warm-up: "
                                         f"{warmup['io']['read_bytes'] / 1e6:.1f} MB)"),
        ("bytes read / folder size", f"{ratio_apparent:.2f} of the files' bytes, **{ratio_disk:.2f}** of their "
                                     f"blocks on disk ({data_read / first_on_disk:.2f} without the baseline)"),
        ("cached answer (wall, CLI in a subprocess)", f"**{cached_s:.2f} s** median of {args.repeats} "
                                                      f"({', '.join(format(c['wall_seconds'], '.2f') for c in cached)}); "
                                                      f"read_bytes {', '.join(format(c['io']['read_bytes'] / 1e6, '.2f') for c in cached)} MB; "
                                                      f"TensorFlow imported: {cached[0]['tensorflow_imported']}"),
    ]
    rows += [(f"cached answer, in-process: {what}", f"{seconds:.2f} s")
             for what, seconds in breakdown["seconds"].items()]
    verdicts = (f"- cached answer under 5 s: **{'met' if cached_met else 'NOT met'}** ({cached_s:.2f} s)\n"
                f"- first extraction reads at most 1.1x the folder: **{'met' if bytes_met else 'NOT met'}** "
                f"({ratio_disk:.2f}x of the blocks on disk, {ratio_apparent:.2f}x of the files' bytes)\n")
    body = (f"The CLI in subprocesses (TensorFlow backend, CPU), MobileNetV2 0.35 at 32 px, random weights, a "
            f"temporary folder on this machine's disk; see the docstring of `benchmarks/bench_folder_scale.py` for "
            f"the runs.\n\n{table(['what', 'measured'], rows)}\n\n{verdicts}")
    command = "python benchmarks/bench_folder_scale.py" + (f" --files {args.files}" if args.files != 100_000 else "") + (
        f" --first-files {args.first_files}" if args.first_files else "") + (
        f" --repeats {args.repeats}" if args.repeats != 3 else "")
    strip = lambda run: {k: v for k, v in run.items() if k != "stdout"}
    write_results("folder_scale", "A folder of 100,000 small JPEGs: cached answer and bytes read", command, body,
                  {"files": len(files), "bytes": apparent, "bytes_on_disk": on_disk, "first_files": len(first_files),
                   "first_bytes": first_apparent, "first_bytes_on_disk": first_on_disk, "write_seconds": made,
                   "warmup": strip(warmup), "baseline": strip(baseline), "first": strip(first),
                   "whole": strip(whole), "cached": [strip(c) for c in cached],
                   "ratio_read_over_bytes": ratio_apparent, "ratio_read_over_disk": ratio_disk,
                   "cached_seconds_median": cached_s, "cached_goal_met": cached_met, "bytes_goal_met": bytes_met,
                   "first_stdout": first["stdout"], "cached_breakdown": breakdown})
    print(body)


if __name__ == "__main__":
    main()
