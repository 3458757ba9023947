"""The linear heads' objectives with their products in ``keras.ops``: on a GPU when Keras sees one.

``logreg`` and ``svm`` minimise ``sum_i s_i loss(z_i W + b) / n + |W|^2 / (2 C n)`` (the intercept is
not penalised; ``s_i`` the row weights of ``class_weight``, else 1): the softmax cross-entropy of scikit-learn's multinomial LogisticRegression, or the
one-vs-rest squared hinge of LinearSVC. Here scipy's L-BFGS-B steps on the host, as on the CPU
path, while every evaluation of the objective and its gradient runs in Keras, ``batch_size`` rows
at a time: the same objective, regularisation and algorithm, so the same optimum up to float32
rounding. Only ``keras.ops`` is used, so it runs under any Keras backend (and on the CPU too, which
is how the tests exercise this code).

The rows stay in their stored dtype (float16 too); each batch is widened to float32 and
standardised on the device with the front's mean and scale, so no standardised copy of the rows
is ever made. On a GPU the batches are moved there once and stay for the whole fit.
"""

import functools
import shutil

import numpy as np
from scipy.optimize import minimize

SOLVERS = ("auto", "lbfgs", "keras")


@functools.cache
def keras_sees_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:  # no NVIDIA driver: no need to import Keras to know
        return False
    from featcache.backend import keras

    return bool(keras.distribution.list_devices("gpu"))


def resolve_solver(solver: str) -> str:
    """``auto``: ``keras`` when Keras sees a GPU, else ``lbfgs`` (the CPU head)."""
    return ("keras" if keras_sees_gpu() else "lbfgs") if solver == "auto" else solver


def warm_weights(head, shape) -> np.ndarray | None:
    """The weights a warm-started refit of ``head`` starts from: its previous Keras-solver weights when
    ``warm_start`` is set and they have this (d + 1, k) shape, else None (start from zeros)."""
    previous = getattr(head, "coef_", None) if head.warm_start else None
    return previous if previous is not None and previous.shape == shape else None


def affine(z: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Decision scores of a (d + 1, k) weight matrix whose last row is the intercept."""
    return z @ coef[:-1].astype(np.float32) + coef[-1].astype(np.float32)


def softmax_loss(ops, logits, onehot, row_weights):
    """Cross-entropy summed with the rows' weights, and its gradient with respect to the logits."""
    log_p = ops.log_softmax(logits, axis=1)
    return -ops.sum(row_weights * (onehot * log_p)), (ops.exp(log_p) - onehot) * row_weights


def squared_hinge_loss(ops, logits, onehot, row_weights):
    """One-vs-rest squared hinge (targets +1 for the row's class, -1 for the others) summed with the rows'
    weights, and its gradient."""
    signs = 2.0 * onehot - 1.0
    slack = ops.relu(1.0 - signs * logits)
    return ops.sum(row_weights * (slack * slack)), -2.0 * signs * slack * row_weights


LOSSES = {"softmax": softmax_loss, "squared_hinge": squared_hinge_loss}


def fit_linear(x, codes, n_classes, loss, C, options, batch_size, scaler=None, rows=None, sample_weight=None,
               start=None):
    """Minimise the objective above over ``x[rows]`` (all rows when None), standardised with ``scaler``
    (None: ``x`` is standardised already). Returns the (d + 1, k) weights, intercept last, and the
    number of L-BFGS iterations. ``options``: scipy's L-BFGS-B options; ``sample_weight``: a weight per
    row of ``x[rows]`` (None: 1); ``start``: (d + 1, k) weights to start from (None: zeros)."""
    from featcache.backend import keras

    ops = keras.ops
    n, d = (len(x) if rows is None else len(rows)), x.shape[1]
    targets = codes if rows is None else codes[rows]
    row_weights = np.ones(n, np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    mean, scale = (None, None) if scaler is None else \
        (ops.convert_to_tensor(scaler.mean_, "float32"), ops.convert_to_tensor(scaler.scale_, "float32"))
    starts = range(0, n, batch_size)

    def batch(start):
        stop = start + batch_size
        block = x[start:stop] if rows is None else x[rows[start:stop]]
        return (ops.convert_to_tensor(block), ops.convert_to_tensor(targets[start:stop]),
                ops.convert_to_tensor(row_weights[start:stop, None]))

    resident = [batch(start) for start in starts] if keras_sees_gpu() else None
    penalty = 1.0 / (C * n)

    def objective(flat):
        coef = flat.reshape(d + 1, n_classes)
        weights, intercept = ops.convert_to_tensor(coef[:-1], "float32"), ops.convert_to_tensor(coef[-1], "float32")
        total, grad_w, grad_b = ops.zeros(()), ops.zeros((n_classes, d)), ops.zeros((n_classes,))
        for block, batch_codes, batch_weights in resident or map(batch, starts):
            z = ops.cast(block, "float32")
            z = z if scaler is None else (z - mean) / scale
            value, pull = LOSSES[loss](ops, ops.matmul(z, weights) + intercept, ops.one_hot(batch_codes, n_classes),
                                       batch_weights)
            total = total + value
            grad_w = grad_w + ops.matmul(ops.transpose(pull), z)  # (k, d): transposes the smaller operand
            grad_b = grad_b + ops.sum(pull, axis=0)
        value = float(ops.convert_to_numpy(total)) / n + 0.5 * penalty * np.sum(coef[:-1] ** 2)
        gradient = np.vstack([ops.convert_to_numpy(grad_w).T / n + penalty * coef[:-1],
                              ops.convert_to_numpy(grad_b)[None] / n])
        return value, gradient.ravel().astype(np.float64)

    initial = np.zeros((d + 1) * n_classes) if start is None else np.ravel(start).astype(np.float64)
    result = minimize(objective, initial, jac=True, method="L-BFGS-B", options=options)
    return result.x.reshape(d + 1, n_classes), int(result.nit)
