from pathlib import Path

import numpy as np
import pytest

import featcache.backend  # noqa: F401  (Keras and TensorFlow loaded once, quietly, before any test imports them)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty cache root for the test (also the CLI's, through FEATCACHE_CACHE)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("FEATCACHE_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def small_spec():
    """A small backbone at a small size with random (seeded) weights, so tests stay fast."""
    from featcache.backbones import make_spec

    return make_spec("mobilenetv2", input_size=32, weights="none", options={"alpha": 0.35})


def write_images(folder: Path, count: int, size=(16, 16), mode="RGB", seed=0, fmt="png"):
    """Write ``count`` random images into ``folder``; return their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
        path = folder / f"img{i:03d}.{fmt}"
        image.save(path)
        paths.append(path)
    return paths


def write_classes(folder: Path, classes: list, count: int) -> Path:
    """A folder dataset: ``count`` random images per class, the first class 24 x 18, the others 20 x 20."""
    for i, name in enumerate(classes):
        write_images(folder / name, count, size=(20, 20) if i else (24, 18), seed=i)
    return folder


def write_cache(root: Path, x, y, x_test=None, y_test=None, class_names=None, spec=None, fingerprint=None,
                dtype="float32", flipped=None):
    """A finished cache file of the given features, written by the cache's own writer (as extract does);
    ``fingerprint``: of its images (default: one of its own); ``flipped``: the flip features of the training
    split (and of the test split), as with tta="flip"."""
    from featcache import cache
    from featcache.backbones import make_spec
    from featcache.compute import resolve

    spec = spec or make_spec("mobilenetv2", input_size=32, weights="none", options={"alpha": 0.35})
    class_names = class_names or [f"c{i}" for i in range(int(max(y.max(), *(y_test if y_test is not None else [0]))) + 1)]
    tta = "flip" if flipped is not None else "none"
    if flipped is not None:  # chunks hold the plain and the flipped features side by side
        x = np.hstack([x, flipped[0]])
        x_test = np.hstack([x_test, flipped[1]]) if x_test is not None else None
    arrays = {"train": (x, y), **({"test": (x_test, y_test)} if x_test is not None else {})}
    rows = {split: len(features) for split, (features, _) in arrays.items()}
    key = cache.cache_key(f"arrays-{sum(rows.values())}-{float(np.sum(x)):.6f}", spec, None, dtype, resolve(), tta)
    stem = cache.cache_stem("arrays", spec, key)
    provenance = {"key": key,
                  "dataset": {"name": "arrays", "fingerprint": fingerprint or key[:32], "label_sets": ["label"]},
                  "backbone": spec.to_record(), "weights_sha256": None, "preprocessing": "none",
                  "dtype": dtype, "tta": tta, "rows": rows, "skipped": []}
    partial = cache.PartialExtraction(stem, {"key": key, "rows": rows, "provenance": provenance}, root)
    for split, (features, _) in arrays.items():
        for index, start in enumerate(range(0, len(features), cache.CHUNK_ROWS)):
            partial.write_chunk(split, index, np.asarray(features[start:start + cache.CHUNK_ROWS], dtype))
    splits = {split: {"rows": len(features), "width": features.shape[1] // len(cache.feature_sets(tta)),
                      "labels": {"label": labels}}
              for split, (features, labels) in arrays.items()}
    path = cache.file_path(stem, root)
    cache.write_cache_file(path, partial, splits, {"label": class_names}, provenance, dtype)
    partial.remove()
    return cache.FeatureCache(path)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty KERAS_HOME for the test, for featcache and for a Keras imported earlier in the session
    (Keras reads $KERAS_HOME once, when it is imported)."""
    path = tmp_path / "keras-home"
    (path / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(path))
    monkeypatch.setattr(featcache.backend.keras.src.backend.config, "_KERAS_DIR", str(path))
    return path


def install_plugin(folder: Path, monkeypatch, module: str, source: str, group: str, entry: str) -> Path:
    """A one-module package installed for this test only: ``module.py`` and its dist-info (declaring the
    entry point ``entry`` in ``group``) in ``folder``, which goes on sys.path. Returns the folder."""
    import sys
    import textwrap

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return folder
