"""Extraction throughput of the host-decode + one-compiled-model pipeline, per Keras backend.

Each backend runs in its own subprocess (KERAS_BACKEND=tensorflow, jax, ...), one subprocess per
backend per round, the backends' order rotating each round; inside a subprocess the variants run in
a rotating order too. Every variant runs the same model, ``featcache.images.feature_model`` with the
settings ``featcache.compute.resolve()`` picks on this machine, on CIFAR-size (32x32) uint8 images:

    bare      ``images.forward`` of one compiled feature model on ONE float32 batch already in
              memory, called again and again: the ceiling (its first call, the trace/compile, is
              timed apart as ``trace_s`` and left out)
    extract   ``featcache.extract.extract`` on an in-memory ``ArrayImages`` dataset (fresh model,
              host batches in threads, forward, chunk writes): its own ``images_per_second``,
              which includes the fresh model's first call
    predict   what ``featcache.predict.head_on_features`` runs: a fresh ``feature_model``, ``HostBatches``
              over the in-memory images, ``forward``, and a fitted logistic-regression head's
              ``predict_proba`` on the features; timed from the first batch (first call included)

"steady" ratios take the one-time first call (``trace_s`` of bare, same model and shapes) out of
extract's and predict's time. The number of images per variant is chosen per backend and backbone
from bare's warm-up speed so that each variant runs about ``--seconds`` (the same n for all three
variants of one round).

    .venv/bin/python benchmarks/bench_extract.py [--rounds 3] [--seconds 8] [--backends tensorflow,jax]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import table, write_results

BATCH = 64
# label, backbone, input size, options
CONFIGS = [("resnet50 @ 64", "resnet50", 64, {}), ("mobilenetv2 0.35 @ 224", "mobilenetv2", 224, {"alpha": 0.35})]
VARIANTS = ("bare", "extract", "predict")
GOAL = 0.9


# --- inside one backend's subprocess ---------------------------------------------------------


def _bare(spec, settings, images, state):
    import numpy as np

    run = state["run"]
    batch = np.asarray(images[:BATCH], dtype=np.float32)
    steps = len(images) // BATCH
    started = time.perf_counter()
    for _ in range(steps):
        run(batch)
    return {"rate": steps * BATCH / (time.perf_counter() - started)}


def _extract(spec, settings, images, state):
    from _common import array_dataset
    from featcache.extract import extract

    with tempfile.TemporaryDirectory(prefix="featcache-bench-") as root:
        result = extract(array_dataset(images), spec, root, batch_size=BATCH, force=True, progress=False,
                         precision=settings.precision, xla=settings.xla)
    return {"rate": result.images_per_second, "seconds": result.seconds}


def _predict(spec, settings, images, state):
    from featcache.datasets import ArrayImages
    from featcache.images import HostBatches, feature_model, forward
    from featcache.predict import probabilities

    run = forward(feature_model(spec, settings), BATCH)
    head = state["head"]
    started = time.perf_counter()
    rows = 0
    for batch in HostBatches(ArrayImages(images), 0, len(images), BATCH, spec.input_size):
        rows += len(probabilities(head, run(batch), 2))
    seconds = time.perf_counter() - started
    return {"rate": rows / seconds, "seconds": seconds}


def worker(args):
    """One backend, every config, the variants in rotating order; prints one JSON line."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from _common import cifar_like
    from featcache import compute
    from featcache.backbones import make_spec
    from featcache.backend import keras
    from featcache.images import feature_model, forward

    settings = compute.resolve()
    out = {"backend": keras.backend.backend(), "keras": keras.__version__, "compute": settings.to_record(),
           "configs": {}}
    functions = {"bare": _bare, "extract": _extract, "predict": _predict}
    for c, (label, name, size, options) in enumerate(CONFIGS):
        spec = make_spec(name, size, "avg", "none", options)
        batch = cifar_like(BATCH, seed=1).astype(np.float32)
        features = forward(feature_model(spec, settings), BATCH)(batch)  # process-wide first-use costs
        started = time.perf_counter()
        model = feature_model(spec, settings)
        build_s = time.perf_counter() - started
        run = forward(model, BATCH)
        started = time.perf_counter()
        run(batch)
        first = time.perf_counter() - started  # what a fresh model's first call costs (extract, predict)
        steps = []
        for _ in range(2):
            started = time.perf_counter()
            run(batch)
            steps.append(time.perf_counter() - started)
        step = min(steps)
        trace = max(first - step, 0.0)
        n = max(2, round(args.seconds / step)) * BATCH
        images = cifar_like(n, seed=args.round)
        head = LogisticRegression(max_iter=50).fit(
            np.concatenate([features, features + 1]), np.r_[np.zeros(BATCH, int), np.ones(BATCH, int)])
        state = {"run": run, "head": head}
        order = list(VARIANTS[(args.round + c) % 3:] + VARIANTS[:(args.round + c) % 3])
        results = {"images": n, "build_s": build_s, "trace_s": trace, "order": order}
        for variant in order:
            results[variant] = functions[variant](spec, settings, images, state)
            print(f"  [{out['backend']}] {label} {variant}: {results[variant]['rate']:.1f} images/s ({n} images)",
                  file=sys.stderr, flush=True)
        flipped = compute.Compute(settings.backend, settings.precision, not settings.xla)
        run_flipped = forward(feature_model(spec, flipped), BATCH)
        started = time.perf_counter()
        run_flipped(batch)
        flipped_first = time.perf_counter() - started
        started = time.perf_counter()
        run_flipped(batch)
        flip_step = time.perf_counter() - started
        flip_steps = max(1, min(n // BATCH, round(args.seconds / 3 / flip_step)))
        started = time.perf_counter()
        for _ in range(flip_steps):
            run_flipped(batch)
        results["bare_xla_flipped"] = {"xla": flipped.xla, "first_s": flipped_first,
                                       "rate": flip_steps * BATCH / (time.perf_counter() - started)}
        print(f"  [{out['backend']}] {label} bare with xla={flipped.xla}: "
              f"{results['bare_xla_flipped']['rate']:.1f} images/s", file=sys.stderr, flush=True)
        out["configs"][label] = results
    print("RESULT " + json.dumps(out), flush=True)


# --- the driver ------------------------------------------------------------------------------


def run_backend(backend, round_index, seconds, env):
    command = [sys.executable, __file__, "--worker", "--round", str(round_index), "--seconds", str(seconds)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, env={**env, "KERAS_BACKEND": backend}, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"the {backend} worker failed (exit {done.returncode})")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["load_before"], result["load_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
    return result


def steady_rate(rate, n, trace):
    """The rate with the one-time first call taken out of the variant's time."""
    seconds = n / rate - trace
    return n / seconds if seconds > 0 else float("nan")


def finite_median(values):
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="about how long each variant runs")
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    backends = args.backends.split(",")
    home = tempfile.mkdtemp(prefix="featcache-keras-")
    env = {**os.environ, "KERAS_HOME": home, "FEATCACHE_CACHE": home}
    runs = {b: [] for b in backends}
    for r in range(args.rounds):
        for backend in backends[r % len(backends):] + backends[:r % len(backends)]:
            print(f"round {r + 1}: {backend} (load {os.getloadavg()[0]:.2f})", flush=True)
            runs[backend].append(run_backend(backend, r, args.seconds, env))

    rows, summary, verdicts = [], {}, []
    for label, *_ in CONFIGS:
        for backend in backends:
            per_round = [run["configs"][label] for run in runs[backend]]
            med = {v: statistics.median(p[v]["rate"] for p in per_round) for v in VARIANTS}
            trace = statistics.median(p["trace_s"] for p in per_round)
            flip = statistics.median(p["bare_xla_flipped"]["rate"] for p in per_round)
            flip_xla = per_round[0]["bare_xla_flipped"]["xla"]
            ratio = {v: statistics.median(p[v]["rate"] / p["bare"]["rate"] for p in per_round)
                     for v in ("extract", "predict")}
            steady = {v: finite_median([steady_rate(p[v]["rate"], p["images"], p["trace_s"]) / p["bare"]["rate"]
                                        for p in per_round]) for v in ("extract", "predict")}
            in_round = {v: [round(p[v]["rate"] / p["bare"]["rate"], 2) for p in per_round] for v in ("extract", "predict")}
            n = [p["images"] for p in per_round]
            summary.setdefault(label, {})[backend] = {"median_rate": med, "trace_s": trace, "images": n,
                                                      "over_bare_in_round": ratio, "steady_over_bare": steady, "per_round": in_round,
                                                      "bare_xla_flipped": {"xla": flip_xla, "median_rate": flip}}
            rows.append((label, backend, f"{med['bare']:.1f}", f"{med['extract']:.1f}", f"{med['predict']:.1f}",
                         f"{ratio['extract']:.2f}x / {steady['extract']:.2f}x",
                         f"{ratio['predict']:.2f}x / {steady['predict']:.2f}x", f"{trace:.1f}",
                         f"{flip:.1f} (xla={'on' if flip_xla else 'off'})",
                         ", ".join(map(str, n)),
                         " / ".join(f"{e:.2f}, {p:.2f}" for e, p in zip(in_round["extract"], in_round["predict"]))))
            for v in ("extract", "predict"):
                if steady[v] != steady[v]:  # nan: the first call took longer than the run itself
                    verdicts.append(f"- {label}, {backend}, {v} / bare: {ratio[v]:.2f}x as run; without the first "
                                    f"call not measurable (it outlasted the run: raise --seconds)")
                    continue
                met = steady[v] >= GOAL
                verdicts.append(f"- {label}, {backend}, {v} / bare: {ratio[v]:.2f}x as run, {steady[v]:.2f}x "
                                f"without the one-time first call (goal >= {GOAL}x: **{'met' if met else 'NOT met'}**"
                                f"{'' if ratio[v] >= GOAL or not met else '; as run, not met'})")
    headers = ["backbone @ px", "backend", "bare images/s", "extract images/s", "predict images/s",
               "extract / bare (as run / steady)", "predict / bare (as run / steady)", "first call s",
               "bare images/s, XLA flipped", "images per variant (rounds)",
               "extract, predict / bare in each round"]
    loads = [(b, r + 1, run["load_before"], run["load_after"]) for b in backends for r, run in enumerate(runs[b])]
    compute_used = {b: runs[b][0]["compute"] for b in backends}
    body = (
        f"CIFAR-size (32x32) random uint8 images, random weights (`weights=\"none\"`: speed does not depend on "
        f"them), avg pooling, batch {BATCH}, float32 features; every variant runs `featcache.images.feature_model` "
        f"with the settings `featcache.compute.resolve()` picks here "
        f"({'; '.join(f'{b}: {c}' for b, c in compute_used.items())}). {args.rounds} rounds; in each, one "
        f"subprocess per backend (order rotating), the variants inside it in rotating order; medians over the "
        f"rounds (ratios: the median of the in-round ratios). \"as run\" counts the fresh model's first call "
        f"(trace/compile), which extract and predict pay once per run; \"steady\" takes it out (it is timed in "
        f"bare: \"first call s\"). \"XLA flipped\": the bare forward of the same model compiled with the other XLA setting than the one resolve() picks, for comparison. See the docstring of `benchmarks/bench_extract.py`.\n\n"
        f"{table(headers, rows)}\n\n{chr(10).join(verdicts)}\n\n"
        f"Load average (1 min) before and after each subprocess: "
        f"{'; '.join(f'{b} round {r}: {a} -> {z}' for b, r, a, z in loads)}.\n")
    command = "python benchmarks/bench_extract.py" + (f" --rounds {args.rounds}" if args.rounds != 3 else "") + (
        f" --seconds {args.seconds:g}" if args.seconds != 8 else "") + (
        f" --backends {args.backends}" if args.backends != "tensorflow,jax" else "")
    write_results("extract_speed", "Extraction throughput per Keras backend", command, body,
                  {"batch_size": BATCH, "rounds": args.rounds, "summary": summary, "runs": runs})
    print(body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
