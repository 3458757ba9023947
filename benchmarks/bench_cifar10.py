"""Real data: ImageNet MobileNetV2 (alpha 0.35, 224 px, avg pooling) features of the full CIFAR-10 JPEGs.

Needs ../shared/data (the weights) and data/cifar10 (cifar10-jpg.tar.gz unpacked); skips otherwise.
Features go to $FEATCACHE_CACHE (default ./cache), so later runs reuse them. Resumable: rerun the
same command after a kill and it continues after the last whole chunk.

    .venv/bin/python benchmarks/bench_cifar10.py
"""

import os
import sys
import threading
import time

from _common import ROOT, offline_weights, peak_rss_mb, skip_unless, table, write_results

DATA = ROOT / "data" / "cifar10"


def main():
    skip_unless(DATA / "train", DATA / "test")
    offline_weights()
    os.environ.setdefault("FEATCACHE_CACHE", str(ROOT / "cache"))
    from featcache.backbones import make_spec
    from featcache.datasets import load_dataset
    from featcache.extract import extract

    loads = []
    sampler = threading.Thread(target=_sample_load, args=(loads,), daemon=True)
    sampler.start()
    started = time.perf_counter()
    dataset = load_dataset(f"folder:{DATA}")
    loaded = time.perf_counter()
    spec = make_spec("mobilenetv2", 224, "avg", "imagenet", {"alpha": 0.35})
    result = extract(dataset, spec, batch_size=64)
    finished = time.perf_counter()
    cpu = sum(os.times()[:2])

    if result.cached:
        print(f"already cached, nothing computed: {result.path} (remove it to measure again)")
        return
    computed = round(result.images_per_second * result.seconds)
    data = {
        "images": sum(result.rows.values()), "computed_this_run": computed, "rows": result.rows,
        "width": result.width, "load_dataset_s": round(loaded - started, 1),
        "extract_call_s": round(finished - loaded, 1), "compute_s": round(result.seconds, 1),
        "images_per_s": round(result.images_per_second, 1), "peak_rss_mb": round(peak_rss_mb()),
        "process_cpu_s": round(cpu, 1), "mean_load_average_1min": round(sum(loads) / max(len(loads), 1), 2),
        "cache_file": str(result.path.relative_to(ROOT) if result.path.is_relative_to(ROOT) else result.path),
        "cache_mb": round(result.path.stat().st_size / 1e6, 1),
    }
    rows = [
        ("images (train + test)", f"{data['images']:,}" + ("" if computed == data["images"]
                                                         else f" ({computed:,} computed in this resumed run)")),
        ("load_dataset (list + decode-check every JPEG)", f"{data['load_dataset_s']} s"),
        ("extract() call (fingerprint, model, compute, HDF5)", f"{data['extract_call_s']} s"),
        ("feature computation (ExtractResult.seconds)", f"{data['compute_s']} s"),
        ("throughput", f"{data['images_per_s']} images/s"),
        ("peak RSS (VmHWM) of the whole process", f"{data['peak_rss_mb']} MB"),
        ("process CPU time (user + system)", f"{data['process_cpu_s']} s"),
        ("mean 1-min load average during the run", f"{data['mean_load_average_1min']} (on 2 cores)"),
        ("cache file", f"`{data['cache_file']}` ({data['cache_mb']} MB, {result.width} features)"),
    ]
    body = ("MobileNetV2 alpha 0.35, ImageNet weights (../shared/data, via KERAS_HOME), 224 px, avg pooling, "
            "batch 64, float32, on `folder:data/cifar10` (cifar10-jpg.tar.gz unpacked: 32x32 JPEGs, "
            "decoded by PIL in the pipeline, resized to 224 by tf.image.resize).\n\n"
            + table(["what", "value"], rows))
    write_results("cifar10_extract", "Extracting CIFAR-10 (60,000 JPEGs) with ImageNet MobileNetV2 0.35 at 224 px",
                  "FEATCACHE_CACHE=cache .venv/bin/python benchmarks/bench_cifar10.py", body, data)
    print(table(["what", "value"], rows))


def _sample_load(loads, every=15):
    while True:
        loads.append(os.getloadavg()[0])
        time.sleep(every)


if __name__ == "__main__":
    sys.exit(main())
