"""Keras and TensorFlow, imported once, with the native libraries' start-up chatter kept off the terminal.

TensorFlow's C++ runtime prints absl and oneDNN lines straight to file descriptor 2 while it
loads, before any log level applies, so the import runs with descriptor 2 pointed at /dev/null
(set ``FEATCACHE_VERBOSE=1``, or pass ``featcache --verbose``, to see them). Every module that
needs Keras imports it from here: ``from featcache.backend import keras``.
"""

import contextlib
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


def tensorflow():
    """The tensorflow module, imported quietly on first use."""
    with native_stderr_silenced():
        import tensorflow as tf
    return tf


with native_stderr_silenced():
    import keras  # noqa: E402  (imports its backend, TensorFlow by default)

if not VERBOSE:
    for name in ("tensorflow", "absl"):  # retracing notices and the like: featcache reports its own progress
        logging.getLogger(name).setLevel(logging.ERROR)
