"""Faults around the feature cache: kills, bad inputs, full or read-only disks, damaged and concurrent files.

Each ends in one ``error: ...`` line (or a ``damaged`` status) and leaves only state a rerun can use.
"""

import os
import pty
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_cache

from featcache import cache
from featcache.cli import main
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.extract import extract

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--backbone", "mobilenetv2", "--alpha", "0.35", "--input-size", "32", "--weights", "none"]


def run(*args):
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def one_error_line(out):
    return out.startswith("error: ") and len(out.strip().splitlines()) == 1 and "Traceback" not in out


def unfinished(root, spec, dataset="synthetic:n=20"):
    """An extraction stopped just before its HDF5 file is written: every chunk there, no .h5."""
    def stop(*args, **kwargs):
        raise RuntimeError("stopped before finishing")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "write_cache_file", stop)
        with pytest.raises(RuntimeError):
            extract(load_dataset(dataset), spec, root, progress=False)
    folder, = (root / "features").glob("*.partial")
    return folder


@pytest.fixture
def mount():
    """Runs `mount ARGS... POINT` (skipping the test where it cannot); unmounts every point afterwards."""
    points = []

    def mount(*args):
        done = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount here ({done.stderr.strip()}): this test needs root and mount rights")
        points.append(str(args[-1]))

    yield mount
    for point in dict.fromkeys(reversed(points)):
        subprocess.run(["umount", point], capture_output=True)


# 1. killed between the rename of the .h5 and the removal of the .partial


def test_a_kill_after_the_final_rename_leaves_no_second_entry(root, small_spec, tmp_path):
    script = ("import os, sys; from featcache import cache; from featcache.cli import main\n"
              "cache.PartialExtraction.remove = lambda self: os.kill(os.getpid(), 9)\n"
              "main(sys.argv[1:])")
    args = ["--cache-dir", str(root), "extract", "--dataset", "synthetic:n=20", *SMALL]
    killed = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True)
    assert killed.returncode == -9
    features = root / "features"
    (h5,), (leftover,) = features.glob("*.h5"), features.glob("*.partial")
    shutil.copytree(leftover, tmp_path / "leftover")
    (features / f"{h5.name}.tmp").write_bytes(b"half a file")

    assert extract(load_dataset("synthetic:n=20"), small_spec, root, progress=False).cached
    assert sorted(p.name for p in features.iterdir()) == [h5.name, f"{h5.stem}.lock"]

    shutil.copytree(tmp_path / "leftover", leftover)
    (leftover / "train-000000.npy.tmp").write_bytes(b"half a chunk")
    entry, = cache.list_entries(root)
    assert entry["status"] == "complete" and not leftover.exists()
    shutil.copytree(tmp_path / "leftover", leftover)
    assert cache.find(h5.stem, root) == h5 and cache.select(root) == h5
    assert run("cache", "verify") == (0, f"{h5.name}: ok\n")
    assert run("cache", "rm", h5.stem)[0] == 0 and not any(features.glob("*.h5"))


# 2. nothing on disk before the inputs are known to be good


def test_a_bad_weights_file_leaves_nothing_on_disk(root, tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not weights at all")
    args = [a if a != "none" else str(garbage) for a in SMALL]
    code, out = run("extract", "--dataset", "synthetic:n=20", *args)
    assert code == 2 and one_error_line(out) and "cannot load weights file" in out
    assert not (root / "features").exists() or not any((root / "features").iterdir())
    assert run("cache", "verify") == (0, "")


# 3. and 4. disk space


def test_too_little_free_space_is_refused_before_any_work(root, small_spec, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(10**6, 0, 1000))
    with pytest.raises(FeatcacheError) as error:
        extract(load_dataset("synthetic:n=20"), small_spec, root, progress=False)
    needed = 2 * 25 * 1280 * 4  # rows x width x 4 bytes, as chunks and again as the .h5 made of them
    assert f"needs about {needed:,} bytes free in {root / 'features'}, but only 1,000 are free" in str(error.value)
    assert not any((root / "features").iterdir())


def test_a_full_disk_ends_in_one_line_and_resumes_to_identical_features(tmp_path, small_spec, mount, monkeypatch):
    root = tmp_path / "small"
    root.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", root)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: namedtuple("usage", "total used free")(1, 0, 1 << 40))
    data = load_dataset("synthetic:n=2100,size=8")  # 2,625 rows x 1280 float32: 13.4 MB, chunks of 5.2 MB

    def attempt():
        with pytest.raises(FeatcacheError, match=f"no space left in {root / 'features'}: about [0-9,]+ more bytes"):
            extract(data, small_spec, root, progress=False)
        assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.h5"))
        return sorted(p.name for p in (root / "features").glob("*.partial/*.npy"))

    assert attempt() == ["train-000000.npy"]  # the second chunk did not fit
    mount("-o", "remount,size=16m", root)
    assert len(attempt()) == 4  # every chunk, but not the HDF5 file beside them
    mount("-o", "remount,size=40m", root)
    resumed = extract(data, small_spec, root, progress=False)
    assert (resumed.computed, resumed.resumed) == (0, 2625)
    fresh = extract(data, small_spec, tmp_path / "fresh", progress=False)
    for split in ("train", "test"):
        assert np.array_equal(cache.FeatureCache(resumed.path).features(split),
                              cache.FeatureCache(fresh.path).features(split))


# 5. read-only cache root


@pytest.mark.parametrize("how", ["chmod", "read-only mount"])
def test_a_read_only_root_serves_hits_and_refuses_work_in_one_line(root, how, mount):
    assert run("extract", "--dataset", "synthetic:n=20", *SMALL)[0] == 0
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("running as root, which ignores chmod write bits; the read-only mount covers it")
        for folder in (root, root / "features"):
            folder.chmod(0o555)
    else:
        mount("--bind", root, root)
        mount("-o", "remount,ro,bind", root)
    code, out = run("extract", "--dataset", "synthetic:n=20", *SMALL)
    assert code == 0 and out.startswith("features are cached")
    code, out = run("extract", "--dataset", "synthetic:n=8", *SMALL)
    assert code == 2 and one_error_line(out) and f"cannot write to {root / 'features'}" in out
    assert run("cache", "ls")[0] == 0 and run("cache", "verify")[0] == 0
    if how == "chmod":
        for folder in (root, root / "features"):
            folder.chmod(0o755)


# 6. damaged unfinished extraction


def test_a_damaged_partial_is_reported_and_resume_recomputes_only_its_damage(root, small_spec, monkeypatch):
    complete = extract(load_dataset("synthetic:n=20"), small_spec, root, progress=False).path
    folder = unfinished(root, small_spec, "synthetic:n=1100,size=8")  # train: chunks of 1024 and 76 rows
    good = {name: np.load(folder / name) for name in ("train-000000.npy", "train-000001.npy", "test-000000.npy")}
    (folder / "manifest.json").write_text("{ garbage")
    (folder / "train-000000.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(folder / "test-000000.npy", good["test-000000.npy"][:10])

    statuses = {e["path"]: e["status"] for e in cache.list_entries(root)}
    assert statuses == {complete: "complete", folder: "damaged: manifest.json is not a featcache manifest"}
    assert cache.verify(folder)[0].startswith("damaged (manifest.json is not a featcache manifest)")
    assert cache.select(root) == complete and cache.verify(complete) == []
    assert run("cache", "ls")[0] == 0 and run("cache", "verify")[0] == 1

    written = []
    write_chunk = cache.PartialExtraction.write_chunk
    monkeypatch.setattr(cache.PartialExtraction, "write_chunk",
                        lambda self, split, index, x: written.append((split, index)) or write_chunk(self, split, index, x))
    resumed = extract(load_dataset("synthetic:n=1100,size=8"), small_spec, root, progress=False)
    assert written == [("train", 0), ("test", 0)] and (resumed.computed, resumed.resumed) == (1024 + 275, 76)
    found = cache.FeatureCache(resumed.path)
    assert np.array_equal(found.features("train"), np.concatenate([good["train-000000.npy"], good["train-000001.npy"]]))
    assert np.array_equal(found.features("test"), good["test-000000.npy"])


# 7. listing while another process finishes an extraction


def test_listing_tolerates_files_vanishing_while_it_reads(root, small_spec, monkeypatch):
    folder = unfinished(root, small_spec)
    complete = write_cache(root, np.ones((4, 3)), np.array([0, 1, 0, 1]))
    load = np.load

    def finished_meanwhile(file, *args, **kwargs):
        shutil.rmtree(folder, ignore_errors=True)  # as the process finishing it does
        return load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", finished_meanwhile)
    assert [e["path"] for e in cache.list_entries(root)] == [complete.path]


# 8. checksums


def test_zeroed_bytes_inside_a_cache_file_are_found(root, small_spec):
    path = extract(load_dataset("synthetic:n=20"), small_spec, root, progress=False).path
    with h5py.File(path, "r") as f:
        chunk = f["train"]["features"].id.get_chunk_info(0)
    assert chunk.size > 1 << 16
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + (chunk.size - (1 << 16)) // 2)
        f.write(bytes(1 << 16))
    assert "train features" in cache.verify(path)[0] and "are damaged" in cache.verify(path)[0]
    with pytest.raises(FeatcacheError, match="are damaged"):
        cache.FeatureCache(path).features("train")
    code, out = run("cache", "verify")
    assert code == 1 and len(out.splitlines()) == 1 and "are damaged" in out


# 9. verify and info while another process extracts


def test_verify_and_info_say_an_extraction_in_progress_is_to_be_waited_for(root, small_spec):
    folder = unfinished(root, small_spec)
    stem = folder.name.removesuffix(".partial")
    with cache.ExtractionLock(stem, root):
        assert cache.verify(folder) == ["being extracted now by another process: wait for it to finish"]
        code, out = run("cache", "info", stem)
        assert code == 2 and one_error_line(out) and "being extracted now by another process" in out
        assert cache.list_entries(root)[0]["status"] == "extracting 25/25 rows"
    assert "rerun `featcache extract`" in cache.verify(folder)[0]


# 10. cache rm of a prefix


def test_rm_of_a_prefix_asks_first_and_an_exact_name_does_not(root):
    first = write_cache(root, np.ones((4, 3)), np.array([0, 1, 0, 1])).path
    second = write_cache(root, np.zeros((4, 3)), np.array([0, 1, 0, 1])).path
    code, out = run("cache", "rm", "arrays")
    assert code == 2 and one_error_line(out) and "pass --yes" in out and first.exists() and second.exists()
    assert run("cache", "rm", first.stem) == (0, f"removed {first}\n") and second.exists()
    write_cache(root, np.ones((4, 3)), np.array([0, 1, 0, 1]))
    code, out = run("cache", "rm", "arrays", "--yes")
    assert code == 0 and not first.exists() and not second.exists()


def test_rm_of_a_prefix_on_a_terminal_removes_after_yes(root):
    first = write_cache(root, np.ones((4, 3)), np.array([0, 1, 0, 1])).path
    second = write_cache(root, np.zeros((4, 3)), np.array([0, 1, 0, 1])).path
    pid, terminal = pty.fork()
    if pid == 0:  # the child, on the terminal
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "featcache.cli", "--cache-dir", str(root), "cache", "rm", "arrays"])
    output = b""
    while not output.rstrip().endswith(b"[y/N]:"):
        output += os.read(terminal, 1024)
    os.write(terminal, b"y\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"remove 2 cache(s) matching 'arrays'" in output and not first.exists() and not second.exists()


# 11. what a resumed extraction says


def test_a_resumed_extraction_says_what_it_resumed_and_computed(root, small_spec):
    unfinished(root, small_spec)
    code, out = run("extract", "--dataset", "synthetic:n=20", *SMALL)
    assert code == 0 and "resumed 25 images already extracted; computed 0 in " in out
    assert "images/s" not in out


def test_fit_and_report_on_a_read_only_root_refuse_before_any_work(root, monkeypatch, mount):
    """After a good extraction, the root turns read-only: fit says so before cross-validating, report before
    building anything."""
    from featcache import cv

    assert run("extract", "--dataset", "synthetic:n=20", *SMALL)[0] == 0
    assert run("fit", "--head", "logreg", "--folds", "2")[0] == 0
    mount("--bind", root, root)
    mount("-o", "remount,ro,bind", root)
    monkeypatch.setattr(cv, "cross_validate_head", lambda *a, **k: pytest.fail("cross-validated first"))
    for command in (["fit", "--head", "logreg", "--folds", "2"], ["report"]):
        code, out = run(*command)
        last = out.strip().splitlines()[-1]  # fit first names the cache it reads
        assert code == 2 and last.startswith("error: cannot write to") and "make it writable" in last
