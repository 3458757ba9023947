"""Keras and TensorFlow, imported once, with the native libraries' start-up chatter kept off the terminal.

TensorFlow's C++ runtime prints absl and oneDNN lines straight to file descriptor 2 while it
loads, before any log level applies, so the import runs with descriptor 2 pointed at /dev/null
(set ``FEATCACHE_VERBOSE=1``, or pass ``featcache --verbose``, to see them). Every module that
needs Keras imports it from here: ``from featcache.backend import keras``.
"""

import contextlib
import importlib.util
import io
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
VERBOSE = bool(os.environ.get("FEATCACHE_VERBOSE"))


@contextlib.contextmanager
def native_stderr_silenced():
    """Descriptor 2 goes to /dev/null inside the block (Python's own exceptions still propagate)."""
    if VERBOSE:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def keras_output_hidden():
    """Keras' own prints (download progress) kept off stdout, unless verbose."""
    return contextlib.nullcontext() if VERBOSE else contextlib.redirect_stdout(io.StringIO())


def gpu_names() -> str | None:
    """The GPUs the Keras backend sees, by name (None: none)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        names = [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    elif backend == "torch":
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        names = [device.name for device in tensorflow().config.list_physical_devices("GPU")]
    return ", ".join(names) or None


def gpu_present() -> bool:
    return gpu_names() is not None


def tensorflow():
    """The tensorflow module, imported quietly on first use."""
    with native_stderr_silenced():
        import tensorflow as tf
    return tf


with native_stderr_silenced():
    import keras  # noqa: E402  (imports its backend, TensorFlow by default)
    if importlib.util.find_spec("tensorflow"):  # other backends still load it for some layers, later and loudly
        importlib.import_module("tensorflow")

if not VERBOSE:
    for name in ("tensorflow", "absl"):  # retracing notices and the like: featcache reports its own progress
        logging.getLogger(name).setLevel(logging.ERROR)


def mixed_policy() -> str:
    """The mixed-precision policy for this device: bfloat16 where the GPU (or the CPU) computes it natively,
    float16 on GPUs older than compute capability 8.0."""
    if not gpu_present():
        return "mixed_bfloat16"
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        capability = float(getattr(jax.devices()[0], "compute_capability", "0") or 0)
    elif backend == "torch":
        import torch

        capability = float("%d.%d" % torch.cuda.get_device_capability())
    else:
        tf = tensorflow()
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        capability = float("%d.%d" % details.get("compute_capability", (0, 0)))
    return "mixed_bfloat16" if capability >= 8.0 else "mixed_float16"


@contextlib.contextmanager
def dtype_policy(policy: str | None):
    """Layers built inside the block use ``policy`` (None: unchanged); the global policy is restored after."""
    before = keras.config.dtype_policy()
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)
