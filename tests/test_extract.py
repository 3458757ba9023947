import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from keras.applications.mobilenet_v2 import preprocess_input
from conftest import write_images

from featcache import cache
from featcache.backend import keras
from featcache.backbones import build_feature_model, make_spec
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.cache import cache_key
from featcache.compute import Compute, resolve
from featcache.extract import extract


@pytest.mark.backends
def test_features_match_the_backbone_on_resized_preprocessed_images(root, small_spec):
    data = load_dataset("synthetic:n=40,size=16")
    result = extract(data, small_spec, root, batch_size=16, progress=False)
    found = cache.FeatureCache(result.path)
    assert found.rows == {"train": 40, "test": 10} and found.width == 1280
    assert np.array_equal(found.labels("train", "coarse"), data.splits["train"].labels["coarse"])
    assert found.class_names == data.class_names

    images = data.splits["test"].images.array
    expected = build_feature_model(small_spec)(preprocess_input(keras.layers.Resizing(32, 32)(images.astype("float32"))))
    np.testing.assert_allclose(found.features("test"), keras.ops.convert_to_numpy(expected), rtol=1e-4, atol=1e-5)
    provenance = found.provenance
    assert provenance["backbone"]["name"] == "mobilenetv2" and provenance["backbone"]["input_size"] == 32
    assert provenance["dataset"]["fingerprint"] == data.fingerprint
    assert provenance["compute"]["backend"] == keras.backend.backend() in provenance["versions"]


def test_second_run_is_served_from_the_cache_and_force_redoes_it(root, small_spec):
    data = load_dataset("synthetic:n=20")
    first = extract(data, small_spec, root, progress=False)
    again = extract(data, small_spec, root, progress=False)
    assert not first.cached and again.cached and again.path == first.path
    forced = extract(data, small_spec, root, progress=False, force=True)
    assert not forced.cached and forced.path == first.path


def test_float16_on_request(root, small_spec):
    result = extract(load_dataset("synthetic:n=20"), small_spec, root, dtype="float16", progress=False)
    assert cache.FeatureCache(result.path).features("train").dtype == np.float16


F32 = Compute("tensorflow")


def test_every_input_changes_the_key(tmp_path, small_spec):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"x")
    base = cache_key("data", small_spec, None, "float32", F32)
    variants = [
        cache_key("other data", small_spec, None, "float32", F32),
        cache_key("data", replace(small_spec, input_size=48), None, "float32", F32),
        cache_key("data", replace(small_spec, pooling="max"), None, "float32", F32),
        cache_key("data", replace(small_spec, options=(("alpha", 0.5),)), None, "float32", F32),
        cache_key("data", replace(small_spec, name="resnet50"), None, "float32", F32),
        cache_key("data", replace(small_spec, seed=1), None, "float32", F32),
        cache_key("data", small_spec, "sha-of-a-weights-file", "float32", F32),
        cache_key("data", small_spec, None, "float16", F32),
        cache_key("data", small_spec, None, "float32", Compute("jax")),
        cache_key("data", small_spec, None, "float32", Compute("tensorflow", precision="mixed")),
        cache_key("data", small_spec, None, "float32", Compute("tensorflow", xla=True)),
    ]
    assert len({base, *variants}) == len(variants) + 1
    one_pixel = load_dataset("synthetic:n=20")
    one_pixel.splits["train"].images.array[0, 0, 0, 0] ^= 1
    assert one_pixel.fingerprint != load_dataset("synthetic:n=20").fingerprint


def test_weights_from_a_local_file(tmp_path, root, small_spec):
    trained = build_feature_model(replace(small_spec, seed=7))
    path = tmp_path / "mine.weights.h5"
    trained.save_weights(path)
    spec = make_spec("mobilenetv2", 32, weights=str(path), options={"alpha": 0.35})
    model = build_feature_model(spec)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(x), trained(x), rtol=1e-5)
    result = extract(load_dataset("synthetic:n=8"), spec, root, progress=False)
    assert cache.FeatureCache(result.path).provenance["weights_sha256"] is not None


def test_a_second_process_on_the_same_key_gets_a_clear_error(root, small_spec):
    data = load_dataset("synthetic:n=20")
    stem = cache.file_path("x", root).parent
    from featcache.cache import cache_stem
    from featcache.backbones import weights_sha256

    key = cache_key(data.fingerprint, small_spec, weights_sha256(small_spec), "float32", resolve())
    with cache.ExtractionLock(cache_stem(data.name, small_spec, key), root):
        with pytest.raises(FeatcacheError, match="another featcache process is extracting"):
            extract(data, small_spec, root, progress=False)
    assert not any(stem.glob("*.h5"))


def _extract_command(root, dataset, tta="none"):
    return [sys.executable, "-m", "featcache.cli", "--cache-dir", str(root), "extract", "--dataset", dataset,
            "--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none",
            "--batch-size", "128", "--tta", tta]


@pytest.mark.backends
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_killed_extraction_resumes_to_identical_features(tmp_path, tta):
    dataset = "synthetic:n=6000,size=8"
    root = tmp_path / "killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(_extract_command(root, dataset, tta), env=env,
                               cwd=os.path.dirname(os.path.dirname(__file__)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial_chunks = root / "features"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial_chunks.glob("*.partial/train-*.npy"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(partial_chunks.glob("*.partial/train-*.npy")), "the extraction never wrote a chunk"
    assert not list(partial_chunks.glob("*.h5")), "killed before the end, yet a cache file exists"
    entry, = cache.list_entries(root)
    assert entry["status"].startswith("incomplete") and cache.verify(entry["path"])

    cwd = os.path.dirname(os.path.dirname(__file__))
    resumed = subprocess.run(_extract_command(root, dataset, tta), env=env, cwd=cwd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    fresh = subprocess.run(_extract_command(tmp_path / "fresh", dataset, tta), env=env, cwd=cwd, capture_output=True)
    assert fresh.returncode == 0
    killed_file, = (root / "features").glob("*.h5")
    fresh_file, = (tmp_path / "fresh" / "features").glob("*.h5")
    assert not list((root / "features").glob("*.partial"))
    killed, fresh = cache.FeatureCache(killed_file), cache.FeatureCache(fresh_file)
    assert killed.feature_sets == fresh.feature_sets == cache.feature_sets(tta)
    for split in ("train", "test"):
        for flip in (False, True) if tta == "flip" else (False,):
            assert np.array_equal(killed.features(split, flip=flip), fresh.features(split, flip=flip))


def test_verify_finds_a_damaged_file_and_rm_removes_it(root, small_spec):
    result = extract(load_dataset("synthetic:n=20"), small_spec, root, progress=False)
    assert cache.verify(result.path) == []
    with h5py.File(result.path, "a") as f:
        f["train"]["features"][0, 0] = np.nan
    assert any("NaN" in p for p in cache.verify(result.path))
    result.path.write_bytes(result.path.read_bytes()[:1000])
    assert cache.verify(result.path)
    cache.remove(cache.find(result.path.stem[:20], root), root)
    assert cache.list_entries(root) == []


def test_skipped_files_are_listed_in_the_cache(tmp_path, root, small_spec):
    write_images(tmp_path / "imgs" / "a", 3)
    write_images(tmp_path / "imgs" / "b", 3)
    (tmp_path / "imgs" / "a" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    data = load_dataset(f"folder:{tmp_path / 'imgs'}", skip_bad=True)
    result = extract(data, small_spec, root, progress=False)
    assert result.skipped == [str(tmp_path / "imgs" / "a" / "bad.jpg")]
    assert cache.FeatureCache(result.path).provenance["skipped"] == result.skipped
    assert cache.FeatureCache(result.path).rows == {"all": 6}


@pytest.mark.backends
def test_mixed_size_folder_resizes_each_image_like_the_uniform_path(tmp_path, root, small_spec):
    """Mixed sizes go through the per-image path; features equal those of each image alone."""
    write_images(tmp_path / "imgs" / "a", 3, size=(20, 10))
    write_images(tmp_path / "imgs" / "b", 2, size=(40, 40), seed=1)
    data = load_dataset(f"folder:{tmp_path / 'imgs'}")
    result = extract(data, small_spec, root, batch_size=4, progress=False)
    features = cache.FeatureCache(result.path).features("all")
    assert features.shape == (5, 1280)

    model = build_feature_model(small_spec)
    images = data.splits["all"].images
    one_by_one = [model(preprocess_input(keras.layers.Resizing(32, 32)(images.read_one(i)[None].astype("float32"))))
                  for i in range(5)]
    np.testing.assert_allclose(features, np.concatenate([keras.ops.convert_to_numpy(f) for f in one_by_one]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision, xla", [("mixed", False), ("float32", True)])
def test_mixed_precision_and_xla_run_here_and_key_their_own_cache(root, small_spec, precision, xla):
    data = load_dataset("synthetic:n=20")
    plain = extract(data, small_spec, root, progress=False, precision="float32", xla=False)
    other = extract(data, small_spec, root, progress=False, precision=precision, xla=xla)
    assert other.path != plain.path and not other.cached
    recorded = cache.FeatureCache(other.path).provenance["compute"]
    assert (recorded["precision"], recorded["xla"]) == (precision, xla)
    a, b = cache.FeatureCache(plain.path).features("train"), cache.FeatureCache(other.path).features("train")
    assert b.dtype == np.float32 and np.isfinite(b).all()
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * np.abs(a).max())  # same features, other rounding


CACHED_ANSWER = """
import sys
import featcache.datasets, featcache.files
def forbidden(*args, **kwargs):
    raise AssertionError("an image file was read")
featcache.files.file_hash = featcache.datasets.decode_image = featcache.datasets.header_size = forbidden
from featcache.cli import main
main(["extract", "--dataset", "folder:" + sys.argv[1], "--backbone", "mobilenetv2", "--alpha", "0.35",
      "--input-size", "32", "--weights", sys.argv[2]], standalone_mode=False)
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""


def test_a_cached_answer_reads_no_image_and_imports_no_tensorflow(tmp_path, root, small_spec):
    write_images(tmp_path / "imgs" / "a", 3)
    write_images(tmp_path / "imgs" / "b", 3, seed=1)
    weights = tmp_path / "w.weights.h5"
    build_feature_model(small_spec).save_weights(weights)
    spec = make_spec("mobilenetv2", 32, weights=str(weights), options={"alpha": 0.35})
    extract(load_dataset(f"folder:{tmp_path / 'imgs'}"), spec, root, progress=False)
    done = subprocess.run([sys.executable, "-c", CACHED_ANSWER, str(tmp_path / "imgs"), str(weights)],
                          capture_output=True, text=True, env={**os.environ, "FEATCACHE_CACHE": str(root)})
    assert done.returncode == 0, done.stderr
    assert "features are cached" in done.stdout and done.stdout.strip().endswith("False False")


def test_the_file_index_sees_a_change_that_keeps_size_and_mtime(tmp_path, root):
    paths = write_images(tmp_path / "imgs" / "a", 2) + write_images(tmp_path / "imgs" / "b", 2, seed=1)
    before = load_dataset(f"folder:{tmp_path / 'imgs'}").fingerprint
    assert load_dataset(f"folder:{tmp_path / 'imgs'}").fingerprint == before  # from the index this time
    stat = paths[0].stat()
    data = bytearray(paths[0].read_bytes())
    data[-20] ^= 0xFF  # same size
    paths[0].write_bytes(bytes(data))
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: only the ctime moved
    assert paths[0].stat().st_size == stat.st_size and paths[0].stat().st_mtime_ns == stat.st_mtime_ns
    assert load_dataset(f"folder:{tmp_path / 'imgs'}").fingerprint != before


def test_the_batch_size_a_run_started_with_is_kept_on_resume(root, small_spec, monkeypatch):
    """Default batch size: the largest that fits (CPU: CPU_BATCH); a resumed run reuses the stored one."""
    from featcache import images

    data = load_dataset("synthetic:n=1100")
    original = cache.PartialExtraction.write_chunk

    def stop_after_one_chunk(self, split, index, features):
        original(self, split, index, features)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.PartialExtraction, "write_chunk", stop_after_one_chunk)
    monkeypatch.setattr(images, "CPU_BATCH", 32)
    with pytest.raises(KeyboardInterrupt):
        extract(data, small_spec, root, progress=False)
    partial, = (root / "features").glob("*.partial")
    assert cache.read_manifest(partial)[0]["batch_size"] == 32
    monkeypatch.setattr(cache.PartialExtraction, "write_chunk", original)
    seen = []
    real_forward = images.forward
    monkeypatch.setattr("featcache.extract.forward", lambda model, size: seen.append(size) or real_forward(model, size))
    monkeypatch.setattr(images, "CPU_BATCH", 64)
    result = extract(data, small_spec, root, progress=False)
    assert seen == [32] and result.resumed == 1024


def test_a_first_extraction_of_a_folder_reads_each_file_once(tmp_path, root, small_spec, monkeypatch):
    """Decoding hashes the bytes it reads; the content key comes from those hashes, not from a second read."""
    import featcache.files

    write_images(tmp_path / "imgs" / "a", 5)
    write_images(tmp_path / "imgs" / "b", 5, seed=1)
    reads, real = [], Path.read_bytes
    with monkeypatch.context() as patch:
        patch.setattr(featcache.files, "file_hash", lambda *a: pytest.fail("an image file was read to hash it"))
        patch.setattr("featcache.file_index.file_hash", featcache.files.file_hash)
        patch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real(self))
        result = extract(load_dataset(f"folder:{tmp_path / 'imgs'}"), small_spec, root, progress=False)
    assert sorted(reads) == sorted(p.name for p in (tmp_path / "imgs").rglob("*.png"))
    data = load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert cache.FeatureCache(result.path).key == cache_key(data.fingerprint, small_spec, None, "float32", resolve())


def test_the_same_images_copied_elsewhere_are_found_by_content_not_extracted_again(tmp_path, root, small_spec,
                                                                                   monkeypatch):
    """A folder unpacked again or copied (paths and stats the file index has never seen) is hashed, not
    extracted, when a cache of the same dataset name and backbone exists; other images are still extracted."""
    import featcache.datasets

    write_images(tmp_path / "one" / "imgs" / "a", 4)
    write_images(tmp_path / "one" / "imgs" / "b", 4, seed=1)
    first = extract(load_dataset(f"folder:{tmp_path / 'one' / 'imgs'}"), small_spec, root, progress=False)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    with monkeypatch.context() as patch:
        patch.setattr(featcache.datasets, "decode_image", lambda *a: pytest.fail("an image was decoded"))
        again = extract(load_dataset(f"folder:{tmp_path / 'two' / 'imgs'}"), small_spec, root, progress=False)
    assert again.cached and again.path == first.path
    changed = next((tmp_path / "two" / "imgs" / "a").iterdir())
    write_images(tmp_path / "spare", 1, seed=7)[0].replace(changed)  # other pixels under the same name
    other = extract(load_dataset(f"folder:{tmp_path / 'two' / 'imgs'}"), small_spec, root, progress=False)
    assert not other.cached and other.computed == 8 and other.path != first.path


def test_a_finished_folder_extraction_leaves_no_in_progress_folder_even_if_killed_at_the_end(tmp_path, root,
                                                                                               small_spec, monkeypatch):
    """The in-progress folder is named by the files' stats and the cache file by their contents: a run killed
    after writing the file still has its folder cleaned up (its manifest names the file it became)."""
    write_images(tmp_path / "imgs" / "a", 3)
    write_images(tmp_path / "imgs" / "b", 3, seed=1)
    with monkeypatch.context() as patch:
        patch.setattr(cache.PartialExtraction, "remove", lambda self: None)  # "killed" before the clean-up
        result = extract(load_dataset(f"folder:{tmp_path / 'imgs'}"), small_spec, root, progress=False)
    leftover, = (root / "features").glob("*.partial")
    assert leftover.stem != result.path.stem
    assert [e["status"] for e in cache.list_entries(root)] == ["complete"] and not leftover.exists()


def test_the_crop_policy_keys_its_own_cache_and_predict_and_export_apply_it(tmp_path, root, small_spec):
    """--resize crop: the shorter side to size / CROP_FRACTION, then the centre; on a photo-shaped folder the
    features differ from the stretched ones, come from the centre only, and predict rebuilds the same."""
    from featcache.backbones import CROP_FRACTION
    from featcache.images import Framing, feature_model, forward

    write_images(tmp_path / "imgs" / "a", 2, size=(48, 32))
    write_images(tmp_path / "imgs" / "b", 2, size=(48, 32), seed=1)
    data = load_dataset(f"folder:{tmp_path / 'imgs'}")
    crop = replace(small_spec, resize="crop")
    stretched, cropped = (extract(data, spec, root, progress=False) for spec in (small_spec, crop))
    assert stretched.path != cropped.path and crop.to_record()["resize"] == "crop"
    assert "resize" not in small_spec.to_record()  # records and keys of the default are as before
    features = cache.FeatureCache(cropped.path).features("all")
    other = cache.FeatureCache(stretched.path).features("all")
    assert np.abs(features - other).max() > 0.01 * np.abs(other).max()  # (random weights: features near 1e-11)
    images = data.splits["all"].images
    side = round(32 / CROP_FRACTION)  # 37: the 48 x 32 photo becomes 55 x 37, the centre 32 x 32 is kept
    assert Framing.of(crop).first == side
    edited = images.read_one(0).copy()
    edited[:, :4] = 255  # the left edge is outside the centre crop
    run = forward(feature_model(crop), 4)
    np.testing.assert_allclose(run(edited[None].astype("float32")), features[:1], rtol=1e-4,
                               atol=1e-4 * np.abs(features).max())
