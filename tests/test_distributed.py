"""Extraction and cross-validation on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on
127.0.0.1, working from their own folder, with their intra-op threads pinned as featcache pins its own workers."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_cache, write_images

pytest.importorskip("distributed", reason="the dask extra is not installed: pip install 'featcache[dask]'")

from featcache import cache, records  # noqa: E402
from featcache.backbones import build_feature_model, make_spec, weights_sha256  # noqa: E402
from featcache.cli import main  # noqa: E402
from featcache.cluster import thread_env  # noqa: E402
from featcache.compute import resolve  # noqa: E402
from featcache.cv import fit_heads, load_features  # noqa: E402
from featcache.datasets import load_dataset  # noqa: E402
from featcache.distributed import extract_distributed  # noqa: E402
from featcache.errors import FeatcacheError  # noqa: E402
from featcache.heads import make_head  # noqa: E402
from featcache.extract import extract  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASET = "synthetic:n=4000,size=8"  # train: 4 chunks, test: 1
COMPUTE = {"batch_size": 128, "precision": "float32", "xla": False, "progress": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The scheduler's address and the worker processes (started without nannies: a SIGKILL ends one for good)."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("workers")  # their working folder: not the tests'
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, **thread_env(1), "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    dask = [sys.executable, "-m", "dask"]
    started = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                 "--no-dashboard"], cwd=folder, env=env, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            started.append(subprocess.Popen([*dask, "worker", address, "--nthreads", "1", "--no-nanny", "--host",
                                             "127.0.0.1", "--no-dashboard", "--local-directory", str(folder)],
                                            cwd=folder, env=env, stderr=subprocess.DEVNULL))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, started[1:]
    finally:
        for process in reversed(started):
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    """The small test backbone with its seeded random weights saved to a file (random weights are refused on a
    cluster: Keras draws other numbers inside a Dask worker)."""
    path = tmp_path_factory.mktemp("weights") / "small.weights.h5"
    small = make_spec("mobilenetv2", input_size=32, weights="none", options={"alpha": 0.35})
    build_feature_model(small).save_weights(path)
    return replace(small, weights=str(path))


@pytest.fixture(scope="module")
def local(spec, tmp_path_factory):
    """The single-process extraction of DATASET (this process's threads pinned alike by its environment)."""
    result = extract(load_dataset(DATASET), spec, tmp_path_factory.mktemp("local"), **COMPUTE)
    found = cache.FeatureCache(result.path)
    return {split: found.features(split) for split in found.splits}


def run(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    return result.exit_code, result.output


def test_sharded_extraction_is_bit_identical_and_reads_as_one_array(cluster, spec, local, tmp_path):
    address, _ = cluster
    root = tmp_path / "sharded"
    result = extract_distributed(load_dataset(DATASET), spec, root, scheduler=address, shard_rows=1024, **COMPUTE)
    found = cache.FeatureCache(result.path)
    assert len(found.shard_files) == 5 and found.rows == {"train": 4000, "test": 1000}
    for split, features in local.items():
        assert np.array_equal(found.features(split), features)
    entry, = cache.list_entries(root)  # leftover cleanup ran, and kept the shard files
    assert entry["status"] == "complete" and entry["shards"] == 5 and cache.verify(result.path) == []
    assert extract_distributed(load_dataset(DATASET), spec, root, scheduler=address, **COMPUTE).cached
    forced = extract_distributed(load_dataset(DATASET), spec, root, scheduler=address, force=True, **COMPUTE)
    assert not forced.cached and forced.resumed == 0
    assert np.array_equal(cache.FeatureCache(forced.path).features("train"), local["train"])

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    missing = sorted((broken / "features").glob("*.shards/train-*.h5"))[1]
    missing.unlink()
    broken_file = next((broken / "features").glob("*.h5"))
    with pytest.raises(FeatcacheError, match=f"shard {missing} is missing"):
        cache.FeatureCache(broken_file)
    assert f"shard {missing} is missing" in cache.verify(broken_file)[0]
    cache.remove(broken_file, broken)
    assert not list((broken / "features").glob("*.shards"))

    code, out = run("--cache-dir", root, "cache", "consolidate", result.path.stem)
    assert code == 0, out
    assert not list((root / "features").glob("*.shards")) and not cache.FeatureCache(result.path).shard_files
    assert np.array_equal(cache.FeatureCache(result.path).features("train"), local["train"])


def test_sharded_flip_extraction_gives_the_local_flip_features(cluster, spec, tmp_path):
    """tta="flip": every shard file holds both feature sets, read back (and consolidated) as the local run's."""
    address, _ = cluster
    dataset = "synthetic:n=2048,size=8"  # train: 2 chunks, test: 1
    local = cache.FeatureCache(extract(load_dataset(dataset), spec, tmp_path / "local", tta="flip", **COMPUTE).path)
    result = extract_distributed(load_dataset(dataset), spec, tmp_path / "sharded", scheduler=address, shard_rows=1024,
                                 tta="flip", **COMPUTE)
    found = cache.FeatureCache(result.path)
    assert found.key == local.key and len(found.shard_files) == 3 and found.flip and cache.verify(result.path) == []
    for split in local.splits:
        for flip in (False, True):
            assert np.array_equal(found.features(split, flip=flip), local.features(split, flip=flip))
    cache.consolidate(result.path, tmp_path / "sharded")
    consolidated = cache.FeatureCache(result.path)
    assert not consolidated.shard_files and consolidated.feature_sets == local.feature_sets
    assert np.array_equal(consolidated.features("train", flip=True), local.features("train", flip=True))


def test_image_files_of_mixed_sizes_give_the_local_features(cluster, spec, tmp_path):
    write_images(tmp_path / "imgs" / "a", 5, size=(20, 10))
    write_images(tmp_path / "imgs" / "b", 4, size=(40, 40), seed=1)
    data = load_dataset(f"folder:{tmp_path / 'imgs'}")
    options = {**COMPUTE, "batch_size": 4}
    sharded = extract_distributed(data, spec, tmp_path / "sharded", scheduler=cluster[0], **options)
    alone = extract(load_dataset(f"folder:{tmp_path / 'imgs'}"), spec, tmp_path / "alone", **options)
    assert sharded.path.name == alone.path.name
    assert np.array_equal(cache.FeatureCache(sharded.path).features("all"), cache.FeatureCache(alone.path).features("all"))


def test_fit_on_the_cluster_gives_the_local_fold_metrics(cluster, root):
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    found = write_cache(root, rng.normal(size=(300, 16)).astype(np.float32) + y[:, None], y)
    heads = {"logreg": make_head("logreg"), "knn": make_head("knn")}
    local = fit_heads(heads, load_features(found), folds=3, jobs=-1, root=root, progress=False)
    code, out = run("fit", "--head", "logreg,knn", "--folds", "3", "--cache", found.path.stem,
                    "--scheduler", cluster[0])
    assert code == 0, out
    remote = {r["head"]: r for r in records.list_records(root)}
    for record in local:
        assert _metrics(remote[record["head"]]) == _metrics(record)


def test_a_fused_fit_on_the_cluster_gives_the_local_fold_metrics(cluster, root):
    rng = np.random.default_rng(1)
    y = np.arange(300) % 3
    specs = [make_spec("mobilenetv2", input_size=size, weights="none", options={"alpha": 0.35}) for size in (32, 48)]
    found = [write_cache(root, rng.normal(size=(300, width)).astype(np.float32) + y[:, None], y, spec=spec,
                         fingerprint="the-same-images") for width, spec in zip((16, 8), specs)]
    local = fit_heads({"logreg": make_head("logreg")}, load_features(found), folds=3, jobs=-1, root=root,
                      progress=False)[0]
    code, out = run("fit", "--head", "logreg", "--folds", "3", "--cache", found[0].path.stem, "--cache",
                    found[1].path.stem, "--scheduler", cluster[0])
    assert code == 0, out
    assert f"replaces the identical earlier record {local['id']}" in out
    [remote] = records.list_records(root)
    assert [p["cache_key"] for p in remote["features"]["parts"]] == [f.key for f in found]
    assert _metrics(remote) == _metrics(local)


def _metrics(record) -> list[dict]:
    """Fold metrics without timings; log loss within 1e-8 (the last bits of lbfgs' sums differ with the memory
    layout of the arrays a worker unpickles), every other metric exactly."""
    return [{k: pytest.approx(v, rel=1e-8) if k == "log_loss" else v for k, v in m.items()
             if not k.endswith("_seconds")} for m in record["cv"]["fold_metrics"]]


def test_a_cache_root_the_workers_cannot_see_is_refused(cluster, spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # /proc/self/cwd is this folder here, and the workers' own folder there
    code, out = run("--cache-dir", "/proc/self/cwd/cache", "extract", "--dataset", "synthetic:n=20",
                    "--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", 32, "--weights", spec.weights,
                    "--scheduler", cluster[0])
    assert code == 2 and out.startswith("error: ") and len(out.strip().splitlines()) == 1
    assert "/proc/self/cwd/cache is not shared with the Dask worker tcp://127.0.0.1:" in out
    assert not list((tmp_path / "cache" / "features").iterdir())


def test_a_second_client_on_the_same_key_gets_the_usual_line(cluster, spec, tmp_path):
    data = load_dataset("synthetic:n=20")
    key = cache.cache_key(data.fingerprint, spec, weights_sha256(spec), "float32", resolve("float32", False))
    stem = cache.cache_stem(data.name, spec, key)
    with cache.ExtractionLock(stem, tmp_path):
        with pytest.raises(FeatcacheError, match="another featcache process is extracting"):
            extract_distributed(data, spec, tmp_path, scheduler=cluster[0], **COMPUTE)


CLIENT = """
import sys
from featcache.backbones import make_spec
from featcache.datasets import load_dataset
from featcache.distributed import extract_distributed
spec = make_spec("mobilenetv2", input_size=32, weights=sys.argv[3], options={"alpha": 0.35})
extract_distributed(load_dataset(sys.argv[4]), spec, sys.argv[1], scheduler=sys.argv[2], shard_rows=1024,
                    batch_size=128, precision="float32", xla=False, progress=False)
"""


def test_a_client_killed_mid_run_resumes_every_shard(cluster, spec, local, tmp_path):
    root = tmp_path / "client"
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(root), cluster[0], spec.weights, DATASET],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((root / "features").glob("*.partial/*.npy")):
        time.sleep(0.02)
    client.kill()
    client.wait()
    assert not list((root / "features").glob("*.h5"))
    result = extract_distributed(load_dataset(DATASET), spec, root, scheduler=cluster[0], shard_rows=1024, **COMPUTE)
    assert result.resumed > 0
    for split, features in local.items():
        assert np.array_equal(cache.FeatureCache(result.path).features(split), features)


def test_a_worker_killed_mid_shard_still_gives_identical_features(cluster, spec, local, tmp_path):
    """Runs last: it leaves the module's cluster one worker short."""
    address, workers = cluster
    root = tmp_path / "killed"
    finished = {}
    thread = threading.Thread(target=lambda: finished.setdefault("result", extract_distributed(
        load_dataset(DATASET), spec, root, scheduler=address, shard_rows=2048, **COMPUTE)))
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list((root / "features").glob("*.partial/*.npy")):  # a shard half done
        time.sleep(0.02)
    workers[0].send_signal(signal.SIGKILL)
    thread.join(180)
    found = cache.FeatureCache(finished["result"].path)
    for split, features in local.items():
        assert np.array_equal(found.features(split), features)
