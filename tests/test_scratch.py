"""Training from scratch: basic-cnn and a small Wide ResNet, resume after an interruption, records, CLI."""

import json

import keras
import pytest
from click.testing import CliRunner

from featcache.cli import main
from featcache import records
from featcache.datasets import load_dataset
from featcache.errors import FeatcacheError
from featcache.report import build_report
from featcache.scratch import scratch
from featcache.settings import TrainOptions, scratch_settings
from featcache.records import RUN_FILE
from featcache.training import STATE_FILE

DATASET = "synthetic:n=96,classes=4,size=16,seed=0"


@pytest.mark.backends
def test_basic_cnn_learns(root):
    settings = scratch_settings("basic-cnn", epochs=3, batch_size=16, augment=False)
    record = scratch(load_dataset(DATASET), settings, options=TrainOptions(patience=0), root=root, progress=False)
    losses = [epoch["loss"] for epoch in record["history"]["train"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert record["test"]["accuracy"] > 0.5  # 4 classes: chance is 0.25
    assert record["kind"] == "scratch" and record["approach"] == "scratch basic-cnn-16"
    assert record["model"]["input_size"] == 16 and record["model"]["architecture"] == "basic-cnn"
    assert record["features"] is None and record["model"]["backbone"] is None


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt("killed after the first epoch")


class CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_run_resumes_from_its_checkpoint(root):
    data = load_dataset(DATASET)
    settings = scratch_settings("basic-cnn", epochs=3, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        scratch(data, settings, root=root, progress=False, callbacks=[Interrupt()])
    run_folder = next((root / "results").glob(f"*/{RUN_FILE}")).parent
    state = json.loads((run_folder / "final" / STATE_FILE).read_text())
    assert state["epoch"] == 1 and (run_folder / "final" / state["checkpoint"]).is_file()
    assert not records.list_records(root)  # an unfinished run is no result
    with pytest.raises(FeatcacheError, match="no unfinished basic-cnn run with these settings"):
        scratch(data, scratch_settings("basic-cnn", epochs=4, batch_size=16), root=root, resume=True, progress=False)
    counted = CountEpochs()
    record = scratch(data, settings, root=root, resume=True, progress=False, callbacks=[counted])
    assert counted.epochs == [1, 2]  # only the epochs the interrupted run had not finished
    assert record["id"] == run_folder.name and len(record["history"]["train"]) == 3
    assert record["history"]["train"][0] == state["history"]["train"][0]
    assert not (run_folder / "final").exists() and (run_folder / "model.keras").is_file()


def test_small_wide_resnet(root):
    settings = scratch_settings("wrn", depth=10, width=1, epochs=1, batch_size=32, dropout=0.1)
    record = scratch(load_dataset(DATASET), settings, root=root, progress=False)
    assert record["head"] == "wrn-10-1" and record["approach"] == "scratch wrn-10-1-16"
    assert record["params"]["depth"] == 10 and record["params"]["weight_decay"] == 5e-4
    model = keras.saving.load_model(records.record_folder(record["id"], root) / "model.keras")
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convolutions) == 1 + 3 * 2 + 2 and convolutions[-1].filters == 64  # 1 + 2 per block + 2 shortcuts


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_scratch_with_folds_shares_the_report_with_heads(root, tmp_path):
    code, out = run("scratch", "--model", "basic-cnn", "--dataset", DATASET, "--epochs", "1", "--batch-size", "16",
                    "--folds", "2")
    assert code == 0, out
    record = records.load_record(out.strip().splitlines()[-1].split()[-1], root)
    assert record["cv"]["folds"] == 2 and len(record["cv"]["fold_metrics"]) == 2
    head = {**record, "id": "head-record", "kind": "head", "approach": "svm on mobilenetv2-32-avg",
            "features": {"backbone": {"name": "mobilenetv2", "input_size": 32, "pooling": "avg"}}, "model": None}
    built = build_report([record, head], tmp_path)
    assert built.text.count("\n\n") == 0  # one section: the same folds of the same data
    assert "scratch basic-cnn-16" in built.text and "svm on mobilenetv2-32-avg" in built.text
    code, out = run("results", "ls")
    assert code == 0 and record["id"] in out
    image = load_dataset(DATASET).splits["test"].images.array[0]
    keras.utils.save_img(tmp_path / "x.png", image)
    code, out = run("predict", "--result", "best", tmp_path / "x.png", "--out", tmp_path / "p.csv")
    assert code == 0 and f"best record: {record['id']}" in out and "1 predictions written" in out, out


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet"], "error: --model resnet must be one of basic-cnn, wrn"),
    (["--model", "wrn", "--depth", "11"], "error: --depth 11 must be 6n+4 and at least 10"),
    (["--dropout", "1.5"], "error: --dropout 1.5 must be a number in [0, 1)"),
    (["--epochs", "0"], "error: --epochs 0 must be an integer >= 1"),
    (["--lr", "-1"], "error: --lr -1.0 must be a number > 0"),
    (["--val-split", "1"], "error: --val-split 1.0 must be a number in [0, 1)"),
    (["--dataset", "digits"], "error: basic-cnn: --input-size 8 must be an integer >= 10"),
    (["--resume"], "error: resume: no unfinished basic-cnn run with these settings"),
])
def test_bad_input_is_one_line(root, args, message):
    code, out = run("scratch", "--dataset", DATASET, *args)
    assert code == 2, out
    assert out.startswith(message) and "Traceback" not in out and len(out.strip().splitlines()) == 1
