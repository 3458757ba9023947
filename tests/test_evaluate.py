"""evaluate: a fitted record's model scored on a labelled dataset it never saw, saved as a record of its own."""

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_images

from featcache import cv, heads, records
from featcache.backbones import build_feature_model, make_spec
from featcache.cache import FeatureCache
from featcache.cli import main
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.evaluate import evaluate
from featcache.extract import extract
from featcache.predict import predict
from featcache.report import build_report, group_key

CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_spec):
    """A logreg record fitted on 3 classes, and new images of two of them (plus an unknown class) to evaluate on."""
    base = tmp_path_factory.mktemp("evaluate")
    for i, name in enumerate(CLASSES):
        write_images(base / "images" / name, 6, seed=i)
        if name != "blue":  # the new dataset holds only green and red: its label 0 is the record's 1
            write_images(base / "new" / name, 5, size=(20, 20), seed=10 + i)
    write_images(base / "unknown" / "red", 3, seed=20)
    write_images(base / "unknown" / "purple", 3, seed=21)
    weights = base / "mine.weights.h5"
    build_feature_model(replace(small_spec, seed=5)).save_weights(weights)
    spec = make_spec("mobilenetv2", 32, weights=str(weights), options={"alpha": 0.35})
    root = base / "cache"
    cache = FeatureCache(extract(load_dataset(f"folder:{base / 'images'}"), spec, root, progress=False).path)
    saved = cv.fit_heads({"logreg": heads.make_head("logreg")}, cv.load_features(cache), folds=2, root=root,
                         progress=False)
    return {"root": root, "record": records.load_record(saved[0]["id"], root), "base": base}


def test_accuracy_is_that_of_predict_and_the_record_round_trips(fitted):
    record, new = fitted["record"], fitted["base"] / "new"
    result = evaluate(record, load_dataset(f"folder:{new}"), root=fitted["root"])
    found, _ = predict(record, [new], top_k=1, progress=False)
    correct = [p.classes[0] == p.path.parent.name for p in found]
    assert len(correct) == 10
    assert result["test"]["accuracy"] == pytest.approx(np.mean(correct))
    matrix = np.array(result["test"]["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix[0].sum() == 0 and list(matrix.sum(axis=1)[1:]) == [5, 5]
    loaded = records.load_record(result["id"], fitted["root"])
    assert loaded["kind"] == "evaluation" and loaded["evaluated"] == record["id"] and loaded["split"] == "all"
    assert loaded["head"] == "logreg" and loaded["approach"] == f"{record['approach']} on folder:new"
    assert loaded["cv"]["folds"] == 0 and loaded["cv"]["summary"] == {}
    assert loaded["test"] == result["test"] and loaded["dataset"]["class_names"] == CLASSES


def test_classes_the_model_never_saw_are_refused(fitted):
    with pytest.raises(FeatcacheError, match="never saw: purple .*its classes: blue, green, red"):
        evaluate(fitted["record"], load_dataset(f"folder:{fitted['base'] / 'unknown'}"), root=fitted["root"])
    with pytest.raises(FeatcacheError, match="no label set 'fine'"):
        evaluate(fitted["record"], load_dataset(f"folder:{fitted['base'] / 'new'}"), "fine", root=fitted["root"])


def test_report_shows_the_evaluation_in_its_dataset_section(fitted, tmp_path):
    record = fitted["record"]
    result = evaluate(record, load_dataset(f"folder:{fitted['base'] / 'new'}"), root=fitted["root"])
    assert group_key(result) != group_key(record)  # other images: never ranked against the CV scores
    built = build_report([record, records.load_record(result["id"], fitted["root"])], tmp_path / "report")
    text = built.markdown.read_text()
    assert "## folder:new" in text and result["approach"] in text
    assert f"{100 * result['test']['accuracy']:.2f}" in built.text
    with pytest.raises(FeatcacheError, match="is an evaluation"):
        evaluate(result, load_dataset(f"folder:{fitted['base'] / 'new'}"), root=fitted["root"])


def test_cli_prints_the_summary_and_refuses_bad_input(fitted):
    record, runner = fitted["record"], CliRunner()
    args = ["--cache-dir", str(fitted["root"]), "evaluate", "--result", record["id"]]
    done = runner.invoke(main, [*args, "--dataset", f"folder:{fitted['base'] / 'new'}", "--batch-size", "4"])
    assert done.exit_code == 0, done.output
    assert f"{record['approach']} on folder:new" in done.output and "Test accuracy %" in done.output
    for extra, message in [(["--dataset", f"folder:{fitted['base'] / 'unknown'}"], "never saw: purple"),
                           (["--dataset", f"folder:{fitted['base'] / 'missing'}"], "does not exist"),
                           (["--dataset", f"folder:{fitted['base'] / 'new'}", "--batch-size", "0"], "--batch-size")]:
        failed = runner.invoke(main, [*args, *extra])
        lines = failed.output.strip().splitlines()
        assert failed.exit_code == 2 and message in failed.output and lines[-1].startswith("error:"), failed.output
