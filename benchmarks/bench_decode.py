"""JPEG decode throughput per core: featcache's PIL path against other decoders, on real JPEGs.

Two sets of real files: CIFAR-size (32x32, the first ``--cifar`` JPEGs of ../shared/data/cifar10-jpg.tar.gz,
unpacked to a temporary folder) and photo-size (``--photos`` of the dogs-vs-cats photos, about
500x375). Each decoder reads every file from its path (the files sit in the page cache after a
warm-up pass) and returns a uint8 (h, w, 3) array:

    featcache   featcache.datasets.decode_image (Pillow + EXIF orientation + mode handling): the product
    pillow      Image.open(path).convert("RGB") -> numpy, nothing else (what Pillow itself costs)
    tf.io       tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    simplejpeg  simplejpeg.decode_jpeg(bytes, colorspace="RGB") (libjpeg-turbo, releases the GIL;
                only when ``import simplejpeg`` works: ``pip install simplejpeg``)

each single-threaded (a plain loop) and with one thread per host core (ThreadPoolExecutor.map), in
``--rounds`` rounds, the decoders' order rotating; the median round counts. "per core" divides the
threaded rate by the number of cores.

    .venv/bin/python benchmarks/bench_decode.py [--rounds 3] [--cifar 2000] [--photos 400]
"""

import argparse
import os
import statistics
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import SHARED_DATA, skip_unless, table, write_results

import numpy as np


def unpack(archive: Path, folder: Path, count: int) -> list[Path]:
    """The first ``count`` .jpg members of the archive, written under ``folder``."""
    paths = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(".jpg"):
                target = folder / member.name.replace("/", "_")
                target.write_bytes(tar.extractfile(member).read())
                paths.append(target)
                if len(paths) == count:
                    break
    return paths


def decoders():
    from PIL import Image

    from featcache.datasets import decode_image

    found = {
        "featcache": decode_image,
        "pillow": lambda path: np.asarray(Image.open(path).convert("RGB")),
    }
    try:
        from featcache.backend import tensorflow

        tf = tensorflow()
        found["tf.io"] = lambda path: tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                                                         expand_animations=False).numpy()
    except ImportError:
        print("tf.io: TensorFlow is not installed, left out")
    try:
        import simplejpeg

        found["simplejpeg"] = lambda path: simplejpeg.decode_jpeg(Path(path).read_bytes(), colorspace="RGB")
    except ImportError:
        print("simplejpeg: not installed (pip install simplejpeg), left out")
    return found


def rate(decode, paths, threads: int) -> float:
    started = time.perf_counter()
    if threads == 1:
        for path in paths:
            decode(path)
    else:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(decode, paths):
                pass
    return len(paths) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cifar", type=int, default=2000)
    parser.add_argument("--photos", type=int, default=400)
    args = parser.parse_args()
    skip_unless(SHARED_DATA / "cifar10-jpg.tar.gz", SHARED_DATA / "dogs-vs-cats.tar.gz")
    cores = os.cpu_count()
    found = decoders()
    with tempfile.TemporaryDirectory(prefix="featcache-decode-") as tmp:
        sets = {}
        for name, archive, count in (("CIFAR 32x32", "cifar10-jpg.tar.gz", args.cifar),
                                     ("dogs-vs-cats photos", "dogs-vs-cats.tar.gz", args.photos)):
            folder = Path(tmp) / archive.split(".")[0]
            folder.mkdir()
            sets[name] = unpack(SHARED_DATA / archive, folder, count)
        info = {}
        for name, paths in sets.items():
            shapes = [found["featcache"](p).shape for p in paths]  # also the warm-up: files in the page cache
            for decode in found.values():
                decode(paths[0])
            pixels = np.mean([h * w for h, w, _ in shapes])
            info[name] = {"files": len(paths), "mean_pixels": float(pixels),
                          "mean_file_bytes": float(np.mean([p.stat().st_size for p in paths])),
                          "typical_shape": max(set(shapes), key=shapes.count)}
            for decoder, decode in found.items():  # every decoder gives the same size of image
                assert decode(paths[0]).shape == shapes[0], decoder
        runs = {(s, d, t): [] for s in sets for d in found for t in (1, cores)}
        for r in range(args.rounds):
            names = list(found)
            names = names[r % len(names):] + names[:r % len(names)]
            for s, paths in sets.items():
                for d in names:
                    for t in (1, cores):
                        runs[s, d, t].append(rate(found[d], paths, t))
            print(f"round {r + 1} done (load {os.getloadavg()[0]:.2f})", flush=True)

    rows, data = [], {"cores": cores, "rounds": args.rounds, "sets": info, "results": []}
    for s in sets:
        base = statistics.median(runs[s, "featcache", 1])
        for d in found:
            single, threaded = statistics.median(runs[s, d, 1]), statistics.median(runs[s, d, cores])
            rows.append((s, d, f"{single:.0f}", f"{threaded:.0f}", f"{threaded / cores:.0f}",
                         f"{threaded / single:.2f}x", f"{single / base:.2f}x"))
            data["results"].append({"set": s, "decoder": d, "single_thread": single, "threaded": threaded,
                                    "threaded_per_core": threaded / cores, "runs_single": runs[s, d, 1],
                                    "runs_threaded": runs[s, d, cores]})
    headers = ["images", "decoder", "images/s, 1 thread", f"images/s, {cores} threads", "per core (threaded)",
               "thread speed-up", "1 thread / featcache"]
    sets_text = "; ".join(f"{s}: {v['files']} files, typical {v['typical_shape'][1]}x{v['typical_shape'][0]}, "
                          f"mean {v['mean_pixels'] / 1e3:.1f} kpixels, {v['mean_file_bytes'] / 1e3:.1f} kB"
                          for s, v in info.items())
    body = (f"Real JPEGs read from a temporary folder (page cache warm), decoded to uint8 RGB arrays. {sets_text}. "
            f"{args.rounds} rounds, decoders interleaved, medians. Decoders: see the docstring of "
            f"`benchmarks/bench_decode.py` (featcache = `featcache.datasets.decode_image`, the product's path).\n\n"
            f"{table(headers, rows)}\n")
    command = "python benchmarks/bench_decode.py" + (f" --rounds {args.rounds}" if args.rounds != 3 else "") + (
        f" --cifar {args.cifar}" if args.cifar != 2000 else "") + (f" --photos {args.photos}" if args.photos != 400 else "")
    write_results("decode", "JPEG decode throughput per core", command, body, data)
    print(body)


if __name__ == "__main__":
    main()
