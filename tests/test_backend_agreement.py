"""The same images and weights under Keras' TensorFlow and JAX backends: features agree within a stated
tolerance, and each backend keys its own cache (so neither serves the other's last bits)."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from featcache.backbones import build_feature_model
from featcache.cache import FeatureCache, list_entries

TOLERANCE = 1e-4  # of the largest feature; measured here: about 1e-6 (float32 rounding in other kernels)


def extract_under(backend: str, root, weights):
    subprocess.run([sys.executable, "-m", "featcache.cli", "--cache-dir", str(root), "extract", "--dataset",
                    "synthetic:n=24", "--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32",
                    "--weights", str(weights)], check=True, capture_output=True,
                   env={"KERAS_BACKEND": backend, "PATH": "/usr/bin:/bin"})


def test_tensorflow_and_jax_give_the_same_features_in_caches_of_their_own(tmp_path, small_spec):
    pytest.importorskip("jax", reason="the jax extra is part of the test install (make test)")
    weights = tmp_path / "shared.weights.h5"  # the same weights for both (random initialisers differ by backend)
    build_feature_model(replace(small_spec, seed=3)).save_weights(weights)
    for backend in ("tensorflow", "jax"):
        extract_under(backend, tmp_path / "cache", weights)
    caches = {FeatureCache(e["path"]).provenance["compute"]["backend"]: FeatureCache(e["path"])
              for e in list_entries(tmp_path / "cache")}
    assert sorted(caches) == ["jax", "tensorflow"]
    a, b = caches["tensorflow"].features("train"), caches["jax"].features("train")
    relative = np.abs(a - b).max() / np.abs(a).max()
    assert relative <= TOLERANCE, f"largest difference {relative:.2e} of the largest feature"
