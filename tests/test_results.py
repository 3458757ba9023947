"""Result records on disk: unreadable ones are skipped and named, leftovers of killed runs are removed,
`results rm`, and an identical rerun of fit replaces its earlier record."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_cache
from test_report import SVM, make_record

from featcache import cv, heads, records
from featcache.cli import main
from featcache.predict import choose_record


def run(*args, input=None):
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def save(record_id, root, **options):
    record = {**make_record("svm on a", SVM, **options), "id": record_id, "model_file": "head.joblib"}
    return records.save_record(record, root)


@pytest.fixture
def broken(root):
    """One good record and three unreadable ones: garbage, empty, and fields missing."""
    save("20261125-101500-svm-aaaaaa", root)
    paths = {}
    for name, text in [("garbage", "\x00{not json"), ("empty", ""),
                       ("missing", json.dumps({"format": records.FORMAT, "id": "x", "created": "now", "kind": "head",
                                               "approach": "svm", "dataset": {}, "cv": {"folds": 2}}))]:
        folder = records.record_folder(f"20261125-101500-{name}-bbbbbb", root)
        folder.mkdir(parents=True)
        paths[name] = folder / records.RECORD_FILE
        paths[name].write_text(text)
    return paths


def test_unreadable_records_are_named_and_skipped(broken, root, tmp_path):
    assert choose_record("best", root)["id"] == "20261125-101500-svm-aaaaaa"
    for args in (["results", "ls"], ["report", "--out", str(tmp_path / "report")]):
        code, out = run(*args)
        assert code == 0 and "Traceback" not in out, out
        assert "svm on a" in out
        for path in broken.values():
            assert sum(str(path) in line for line in out.splitlines()) == 1, out


def leftovers(root) -> dict:
    """Folders a killed fit leaves, and a resumable training run."""
    folders = {name: records.record_folder(f"20261125-101500-{name}-cccccc", root)
               for name in ("empty", "tmp", "head", "run")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    (folders["tmp"] / "record.json.tmp").write_text("{")
    (folders["head"] / "head.joblib").write_bytes(b"model")
    (folders["run"] / "run.json").write_text("{}")
    return folders


def test_results_rm_incomplete_keeps_resumable_and_owned_runs(root):
    save("20261125-101500-svm-aaaaaa", root)
    folders = {**leftovers(root), "owned": records.record_folder("20261125-101500-owned-cccccc", root)}
    with records.RunLock(folders["owned"]):
        code, out = run("results", "ls")
        assert code == 0 and "cccccc" not in out
        code, out = run("results", "rm", "--incomplete")
        assert code == 0, out
    assert [name for name, folder in folders.items() if folder.exists()] == ["run", "owned"]
    assert "removed 3 leftover folders" in out and records.record_folder("20261125-101500-svm-aaaaaa", root).exists()


def test_results_rm_by_id_and_prefix(root):
    for name in ("svm-aaaaaa", "svm-bbbbbb", "knn-cccccc"):
        save(f"20261125-101500-{name}", root)
    code, out = run("results", "rm", "20261125-101500-svm")
    assert code != 0 and "2 records match" in out and "--yes" in out and len(records.list_records(root)) == 3
    code, out = run("results", "rm", "20261125-101500-svm", input="n\n")
    assert code != 0 and len(records.list_records(root)) == 3
    code, out = run("results", "rm", "20261125-101500-knn")
    assert code == 0 and "removed 20261125-101500-knn-cccccc" in out
    code, out = run("results", "rm", "20261125-101500-svm", "--yes")
    assert code == 0 and not records.list_records(root)
    code, out = run("results", "rm", "nothing")
    assert code == 2 and out.startswith("error: no result record matches 'nothing'")


@pytest.fixture
def features(root):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), np.repeat([0, 1, 2], 20)
    return cv.load_features(write_cache(root, x + y[:, None], y))


def test_identical_rerun_replaces_its_record_and_cleans_leftovers(root, features):
    folders = leftovers(root)
    first = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, folds=2, root=root, progress=False)[0]
    assert [name for name, folder in folders.items() if folder.exists()] == ["run"]
    other_seed = cv.fit_heads({"logreg": heads.make_head("logreg")}, features, folds=2, seed=1, root=root,
                              progress=False)[0]
    code, out = run("fit", "--head", "logreg", "--folds", "2")
    assert code == 0 and f"replaces the identical earlier record {first['id']}" in out, out
    kept = [r["id"] for r in records.list_records(root)]
    assert len(kept) == 2 and first["id"] not in kept and other_seed["id"] in kept
