import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest

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
