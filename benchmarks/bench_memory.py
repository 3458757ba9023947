"""Peak memory of extraction: 32x32 uint8 images resized to 224x224 through featcache.extract.extract.

Each dataset size runs in its own fresh subprocess, so the peak resident set size (VmHWM from
/proc/self/status) belongs to that run alone. The child process imports TensorFlow, makes n random
32x32x3 uint8 images in memory (`_common.cifar_like`, as one array: the source images, n x 3,072
bytes, which are counted in the peak), and extracts MobileNetV2 (alpha 0.35, random weights: memory
does not depend on them) avg-pooled float32 features at 224x224 into a temporary cache folder,
batch 64. A thread samples the current RSS (VmRSS) every second, so the table also shows whether
memory keeps growing during the run (first half vs second half of the samples).

    .venv/bin/python benchmarks/bench_memory.py [--sizes 15000 60000] [--batch-size 64]

Nothing is subtracted from the peak; the source images' size is reported beside it.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import array_dataset, cifar_like, peak_rss_mb, table, write_results

BACKBONE, INPUT_SIZE, OPTIONS = "mobilenetv2", 224, {"alpha": 0.35}
TARGET_BYTES = 2.5e9  # the "under 2.5 GB RSS", read strictly as 10^9 bytes (2,384 MiB)


def rss_mb() -> float:
    """This process's current resident set size (VmRSS) in MiB (kB / 1024, as /proc reports it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(n: int, batch_size: int) -> dict:
    """One extraction of n images in this process; returns what it measured."""
    import tensorflow as tf  # noqa: F401  (imported before the baseline reading, as extract would)

    from featcache.backbones import make_spec
    from featcache.extract import extract

    rss_imports = rss_mb()
    images = cifar_like(n)
    rss_source = rss_mb()
    dataset = array_dataset(images)
    spec = make_spec(BACKBONE, INPUT_SIZE, "avg", "none", OPTIONS)

    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.perf_counter(), rss_mb()))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory(prefix="featcache-mem-") as root:
        started = time.perf_counter()
        sampler.start()
        result = extract(dataset, spec, root, batch_size=batch_size, force=True, progress=False)
        stop.set()
        sampler.join()
        seconds = time.perf_counter() - started
        file_mb = result.path.stat().st_size / 1e6
    half = len(samples) // 2
    return {
        "images": n, "batch_size": batch_size,
        "source_images_mb": images.nbytes / 2**20,
        "rss_after_imports_mb": rss_imports,
        "rss_after_source_mb": rss_source,
        "peak_rss_mb": peak_rss_mb(),
        "max_rss_first_half_mb": max((r for _, r in samples[:half]), default=None),
        "max_rss_second_half_mb": max((r for _, r in samples[half:]), default=None),
        "rss_samples": [(round(t - started, 1), round(r, 1)) for t, r in samples],
        "seconds": seconds, "extract_seconds": result.seconds, "images_per_second": result.images_per_second,
        "width": result.width, "cache_file_mb": file_mb,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[15_000, 60_000])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.batch_size)), flush=True)
        return

    runs = []
    for n in args.sizes:
        print(f"{n} images: extracting in a fresh process ...", flush=True)
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, cwd=Path(__file__).parent)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if out.returncode or line is None:
            sys.exit(f"the child for {n} images failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        runs.append(json.loads(line[len("RESULT "):]))
        r = runs[-1]
        print(f"  peak RSS {r['peak_rss_mb']:,.0f} MB, {r['images_per_second']:.1f} images/s, "
              f"{r['seconds']:.0f} s", flush=True)

    rows = [(f"{r['images']:,}", f"{r['source_images_mb']:,.0f}", f"{r['rss_after_imports_mb']:,.0f}",
             f"{r['rss_after_source_mb']:,.0f}", f"{r['max_rss_first_half_mb']:,.0f}",
             f"{r['max_rss_second_half_mb']:,.0f}", f"**{r['peak_rss_mb']:,.0f}**",
             f"{r['peak_rss_mb'] - r['rss_after_source_mb']:,.0f}", f"{r['images_per_second']:.1f}",
             f"{r['seconds'] / 60:.1f}") for r in runs]
    headers = ["images", "source uint8 images (MB)", "RSS after importing TF (MB)", "RSS with the source (MB)",
               "max RSS, 1st half of run (MB)", "max RSS, 2nd half (MB)", "peak RSS, VmHWM (MB)",
               "peak minus RSS with the source (MB)", "images/s", "minutes"]
    largest, smallest = max(runs, key=lambda r: r["images"]), min(runs, key=lambda r: r["images"])
    growth = largest["peak_rss_mb"] - smallest["peak_rss_mb"]
    source_growth = largest["source_images_mb"] - smallest["source_images_mb"]
    under = largest["peak_rss_mb"] * 2**20 < TARGET_BYTES
    body = (
        f"`featcache.extract.extract` of n random 32x32x3 uint8 images (one in-memory array, `ArrayImages`) "
        f"resized to {INPUT_SIZE}x{INPUT_SIZE}, {BACKBONE} alpha {OPTIONS['alpha']}, random weights, avg pooling, "
        f"float32 features, batch {args.batch_size}, written to a temporary cache folder. Each size ran in its own "
        f"fresh subprocess; the peak is that process's VmHWM, **nothing subtracted**: it includes TensorFlow, the "
        f"model, the tf.data pipeline, the feature chunks, the HDF5 write, and the source images themselves "
        f"(their size is in its own column). RSS was also sampled every second during extraction (the two "
        f"\"half\" columns). MB here = MiB (kB / 1024 as /proc reports).\n\n"
        f"{table(headers, rows)}\n\n"
        f"- Target: under 2.5 GB (2,384 MiB) at {largest['images']:,} images: "
        f"**{'met' if under else 'NOT met'}** ({largest['peak_rss_mb']:,.0f} MiB = "
        f"{largest['peak_rss_mb'] * 2**20 / 1e9:.2f} GB).\n"
        f"- Flat as the dataset grows: {largest['images'] / smallest['images']:.0f}x the images raised the peak by "
        f"{growth:,.0f} MiB, of which {source_growth:,.0f} MiB is the larger in-memory source array; the "
        f"pipeline's own part (peak minus RSS with the source) went from "
        f"{smallest['peak_rss_mb'] - smallest['rss_after_source_mb']:,.0f} to "
        f"{largest['peak_rss_mb'] - largest['rss_after_source_mb']:,.0f} MiB. For comparison, the resized "
        f"dataset in float32 would be {largest['images'] * INPUT_SIZE * INPUT_SIZE * 3 * 4 / 1e9:.1f} GB.\n"
        f"- The machine was shared with other jobs during the run, which affects images/s, not memory.\n"
    )
    command = "python benchmarks/bench_memory.py" + (
        f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes != [15_000, 60_000] else "") + (
        f" --batch-size {args.batch_size}" if args.batch_size != 64 else "")
    write_results("extract_memory", "Peak memory while extracting", command, body,
                  {"backbone": BACKBONE, "input_size": INPUT_SIZE, "options": OPTIONS, "runs": runs})
    print(body)


if __name__ == "__main__":
    main()
