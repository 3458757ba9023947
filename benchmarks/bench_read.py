"""Read speed: FeatureCache(path).features("train") of a 50,000 x 2048 float32 split (409.6 MB), cold and warm.

The file is written by the real writer (cache.write_cache_file, from .npy chunks) with synthetic
features. "Cold" drops the file from the page cache first (posix_fadvise DONTNEED, plus
/proc/sys/vm/drop_caches when permitted); "warm" reads it again straight after. Cold and warm
reads alternate. For context, two other reads of the same file: "HDF5 read_direct" is h5py's
`Dataset.read_direct` into a new array alone (what `features()` does, without `FeatureCache`'s
opening and metadata reads), and "raw file read" reads the file's bytes into a new array of the
file's size: the disk's own speed. All three allocate their output inside the timing, as
`features()` must.

    .venv/bin/python benchmarks/bench_read.py [--rows 50000] [--width 2048] [--repeats 5] [--dir DIR]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import table, write_results
from featcache import cache


def write_file(folder: Path, rows: int, width: int) -> Path:
    rng = np.random.default_rng(0)
    partial = cache.PartialExtraction("bench", {"key": "bench"}, folder)
    for index, start in enumerate(range(0, rows, cache.CHUNK_ROWS)):
        n = min(cache.CHUNK_ROWS, rows - start)
        partial.write_chunk("train", index, rng.standard_normal((n, width), dtype=np.float32))
    path = cache.file_path("bench", folder)
    splits = {"train": {"rows": rows, "width": width, "labels": {"label": np.zeros(rows, dtype=np.int64)}}}
    cache.write_cache_file(path, partial, splits, {"label": ["x"]}, {"skipped": []}, "float32")
    partial.remove()
    return path


def drop_from_page_cache(path: Path) -> bool:
    """Evict the file's pages; True when the system-wide drop_caches was permitted too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def read_features(path: Path) -> float:
    started = time.perf_counter()
    features = cache.FeatureCache(path).features("train")
    seconds = time.perf_counter() - started
    assert features.shape[0] > 0 and np.isfinite(features[-1]).all()
    return seconds


def read_hdf5(path: Path) -> float:
    import h5py

    started = time.perf_counter()
    with h5py.File(path, "r") as f:
        dataset = f["train"]["features"]
        features = np.empty(dataset.shape, dtype=dataset.dtype)
        dataset.read_direct(features)
    seconds = time.perf_counter() - started
    assert np.isfinite(features[-1]).all()
    return seconds


def read_bytes(path: Path) -> float:
    started = time.perf_counter()
    buffer = np.empty(path.stat().st_size, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        assert f.readinto(memoryview(buffer)) == len(buffer)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", help="where to write the file (default: a temporary folder, removed after)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="featcache-read-") as folder:
        started = time.perf_counter()
        path = write_file(Path(folder), args.rows, args.width)
        write_s = time.perf_counter() - started
        mb = args.rows * args.width * 4 / 1e6
        kinds = (("features()", read_features), ("HDF5 read_direct", read_hdf5), ("raw file read", read_bytes))
        times = {f"{kind} {state}": [] for kind, _ in kinds for state in ("cold", "warm")}
        dropped_all = True
        for r in range(args.repeats):
            for kind, read in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:  # the order rotates each round
                dropped_all &= drop_from_page_cache(path)
                times[f"{kind} cold"].append(read(path))
                times[f"{kind} warm"].append(read(path))
        file_mb = path.stat().st_size / 1e6

    rows = []
    for name, seconds in times.items():
        size = file_mb if name.startswith("raw") else mb
        rates = sorted(size / s for s in seconds)
        rows.append((name, f"{statistics.median(rates):,.0f}", f"{rates[0]:,.0f} - {rates[-1]:,.0f}",
                     f"{statistics.median(seconds):.3f}"))
    median_cold = float(rows[0][1].replace(",", ""))
    verdict = "met" if median_cold >= 500 else "NOT met"
    eviction = ("posix_fadvise(DONTNEED) on the file and `echo 1 > /proc/sys/vm/drop_caches`" if dropped_all else
                "posix_fadvise(DONTNEED) on the file only (drop_caches was not permitted)")
    body = (f"A {args.rows:,} x {args.width} float32 split ({mb:.1f} MB of features, file {file_mb:.1f} MB, "
            f"HDF5 chunks of {cache.CHUNK_ROWS} rows) written by `cache.write_cache_file` in {write_s:.1f} s, "
            f"then read whole with `FeatureCache(path).features(\"train\")` (including opening the file and "
            f"reading its metadata). {args.repeats} rounds, each alternating cold and warm reads of every kind (the "
            f"order rotating each round); cold = after {eviction}. MB = 10^6 bytes.\n\n"
            f"`features()` reads the whole dataset with h5py's `read_direct` into a new array; HDF5 then reads "
            f"each {cache.CHUNK_ROWS}-row chunk with one `pread` straight into that array, in file order (seen "
            f"with strace), so its access pattern is already a sequential read. The raw read is one `readinto` call for the "
            f"whole file into a new array. The disk is a virtual one (the host may "
            f"still cache what this machine dropped, so a cold read here can beat a physical disk) and the machine "
            f"was shared with other jobs: cold reads vary a lot from read to read (see min - max), so compare kinds within "
            f"this table rather than across runs.\n\n"
            + table(["read", "MB/s (median)", "MB/s (min - max)", "seconds (median)"], rows)
            + f"\n\nTarget: >= 500 MB/s for the cold `features()` read: **{verdict}** "
              f"({median_cold:,.0f} MB/s).\n")
    command = "python benchmarks/bench_read.py" + (f" --rows {args.rows} --width {args.width}"
                                                   if (args.rows, args.width) != (50_000, 2048) else "") + (
        f" --repeats {args.repeats}" if args.repeats != 5 else "")
    write_results("cache_read", "Reading cached features back into memory", command, body,
                  {"rows": args.rows, "width": args.width, "feature_mb": mb, "file_mb": file_mb,
                   "write_s": write_s, "drop_caches_permitted": dropped_all, "seconds": times})
    print(body)


if __name__ == "__main__":
    main()
