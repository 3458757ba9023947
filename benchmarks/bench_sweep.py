"""What a head's built-in sweep (featcache fit --sweep) costs against one fit with its defaults.

On synthetic features shaped like real pooled features (bench_heads.synthetic, smaller by default), each head
is fitted once with its defaults and once through featcache.sweeps.Swept (every sweep point on 80% of the
training rows, scored on the other 20%, then the best refitted on all of them); both are scored on held-out
rows. For the warm-started sweeps (logreg, svm) the same sweep without warm starts is timed too.

    .venv/bin/python benchmarks/bench_sweep.py [--rows 10000] [--width 512] [--classes 20] [--heads logreg,svm,knn]
"""

import argparse
import dataclasses
import time

import numpy as np

from _common import table, write_results
from bench_heads import synthetic


def timed(estimator, x, y, x_test, y_test):
    started = time.perf_counter()
    estimator.fit(x, y)
    seconds = time.perf_counter() - started
    return seconds, float(np.mean(estimator.predict(x_test) == y_test))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--heads", default="logreg,svm,knn")
    args = parser.parse_args()
    from featcache import heads
    from featcache.sweeps import Swept

    x, y = synthetic(args.rows * 5 // 4, args.width, args.classes)
    x, x_test, y, y_test = x[:args.rows], x[args.rows:], y[:args.rows], y[args.rows:]
    rows, data = [], {}
    for name in args.heads.split(","):
        head = heads.make_head(name)
        one, one_accuracy = timed(head, x, y, x_test, y_test)
        swept = Swept(head)
        sweep_seconds, sweep_accuracy = timed(swept, x, y, x_test, y_test)
        sweep = type(head).sweep
        cold = None
        if sweep.warm:  # the same sweep from zero weights at every point
            type(head).sweep = dataclasses.replace(sweep, warm=False)
            try:
                cold = timed(Swept(head), x, y, x_test, y_test)[0]
            finally:
                type(head).sweep = sweep
        data[name] = {"one_fit_s": one, "one_fit_accuracy": one_accuracy, "sweep_s": sweep_seconds,
                      "sweep_accuracy": sweep_accuracy, "points": len(swept.curve_), "chosen": swept.best_params_,
                      "sweep_cold_s": cold}
        rows.append([name, f"{one:.2f}", f"{sweep_seconds:.2f}", f"{sweep_seconds / one:.1f}x", len(swept.curve_),
                     "—" if cold is None else f"{cold:.2f}", ", ".join(f"{k}={v:.3g}" for k, v in swept.best_params_.items()),
                     f"{100 * one_accuracy:.2f}", f"{100 * sweep_accuracy:.2f}"])
        print(rows[-1], flush=True)
    body = (f"{args.rows:,} x {args.width} training rows of {args.classes} classes "
            f"(bench_heads.synthetic), {len(y_test):,} held-out rows scored.\n\n"
            + table(["head", "one fit s", "sweep s", "sweep / fit", "points", "sweep s without warm starts",
                     "chosen", "defaults accuracy %", "swept accuracy %"], rows))
    command = (f".venv/bin/python benchmarks/bench_sweep.py --rows {args.rows} --width {args.width} "
               f"--classes {args.classes} --heads {args.heads}")
    write_results("sweep", "What the built-in sweep costs against one fit", command, body, data)


if __name__ == "__main__":
    main()
