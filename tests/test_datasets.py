import pickle
import tarfile

import numpy as np
import pytest
from conftest import write_images

from featcache.datasets import FileImages, decode_image, load_dataset
from featcache.errors import FeatcacheError


def _cifar_rows(n, seed):
    """CIFAR's row layout: 1024 red, then 1024 green, then 1024 blue values per image."""
    return np.random.default_rng(seed).integers(0, 255, size=(n, 3072), dtype=np.uint8)


def write_cifar100(folder, n_train=12, n_test=5):
    folder.mkdir(parents=True)
    for name, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        fine = np.arange(n) % 100
        batch = {b"data": _cifar_rows(n, seed), b"fine_labels": list(fine), b"coarse_labels": list(fine // 5)}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))


def test_cifar100_python_folder_has_both_label_sets(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python")
    data = load_dataset("cifar100", data_dir=tmp_path)
    train = data.splits["train"]
    assert data.label_sets == ["fine", "coarse"]
    assert data.class_names["fine"][7] == "fine7" and len(data.class_names["coarse"]) == 20
    assert train.images.array.shape == (12, 32, 32, 3) and train.images.array.dtype == np.uint8
    assert list(train.labels["fine"][:3]) == [0, 1, 2] and list(train.labels["coarse"][5:7]) == [1, 1]
    row = _cifar_rows(12, 1)[3]
    pixel = train.images.array[3, 0, 1]  # row 0, column 1: channel planes of 1024 values each
    assert list(pixel) == [row[1], row[1024 + 1], row[2048 + 1]]


def test_cifar100_tar_gz_gives_the_same_dataset(tmp_path):
    write_cifar100(tmp_path / "src" / "cifar-100-python")
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    from_tar = load_dataset("cifar100", data_dir=archive)
    from_folder = load_dataset("cifar100", data_dir=tmp_path / "src")
    assert from_tar.fingerprint == from_folder.fingerprint


def test_cifar10_python_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, seed in [(f"data_batch_{i}", i) for i in range(1, 6)] + [("test_batch", 9)]:
        (folder / name).write_bytes(pickle.dumps({b"data": _cifar_rows(4, seed), b"labels": [0, 1, 2, 3]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert len(data.splits["train"].images) == 20 and len(data.splits["test"].images) == 4
    assert data.class_names == {"label": [f"c{i}" for i in range(10)]}


def test_cifar_missing_local_copy_says_what_to_do(tmp_path):
    with pytest.raises(FeatcacheError, match="expected the cifar-100-python folder"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_folder_with_splits_and_image_modes(tmp_path):
    write_images(tmp_path / "train" / "cat", 3, mode="L")
    write_images(tmp_path / "train" / "dog", 3, mode="P")
    write_images(tmp_path / "test" / "cat", 2, mode="RGBA")
    write_images(tmp_path / "test" / "dog", 2, fmt="jpg")
    data = load_dataset(f"folder:{tmp_path}")
    assert set(data.splits) == {"train", "test"} and data.class_names["label"] == ["cat", "dog"]
    assert list(data.splits["train"].labels["label"]) == [0, 0, 0, 1, 1, 1]
    images = data.splits["test"].images
    assert all(images.read_one(i).shape == (16, 16, 3) and images.read_one(i).dtype == np.uint8 for i in range(4))


def test_folder_without_splits_and_mixed_sizes(tmp_path):
    write_images(tmp_path / "a", 2, size=(20, 10))
    write_images(tmp_path / "b", 2, size=(8, 30))
    data = load_dataset(f"folder:{tmp_path}")
    assert list(data.splits) == ["all"]
    images = data.splits["all"].images
    assert images.read_one(0).shape == (10, 20, 3) and images.read_one(2).shape == (30, 8, 3)


def test_undecodable_file_is_an_error_naming_it_unless_skipped(tmp_path):
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 2)
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"not an image")
    images = load_dataset(f"folder:{tmp_path}").splits["all"].images  # nothing is decoded yet
    with pytest.raises(FeatcacheError, match="broken.png.*skip_bad=True"):
        images.read_one(images.paths.index(bad))
    data = load_dataset(f"folder:{tmp_path}", skip_bad=True)
    assert data.skipped == [str(bad)] and len(data.splits["all"].images) == 4


def test_tiny_imagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    for w in wnids:
        write_images(root / "train" / w / "images", 2, fmt="JPEG")
    val = write_images(root / "val" / "images", 2, fmt="JPEG")
    (root / "wnids.txt").write_text("\n".join(wnids))
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby cat\nn99\tunused\n")
    (root / "val" / "val_annotations.txt").write_text(
        f"{val[0].name}\tn02\t0\t0\t10\t10\n{val[1].name}\tn01\t0\t0\t10\t10\n")
    data = load_dataset("tiny-imagenet", data_dir=tmp_path)
    assert data.class_names["label"] == ["goldfish, Carassius auratus", "tabby cat"]
    assert list(data.splits["test"].labels["label"]) == [1, 0] and len(data.splits["train"].images) == 4


def test_digits_and_synthetic_are_deterministic():
    digits = load_dataset("digits")
    assert digits.splits["train"].images.array.shape[1:] == (8, 8, 3)
    assert load_dataset("synthetic:n=20").fingerprint == load_dataset("synthetic:n=20").fingerprint
    assert load_dataset("synthetic:n=20").fingerprint != load_dataset("synthetic:n=20,seed=1").fingerprint


@pytest.mark.parametrize("name, message", [
    ("imagenet", "unknown dataset"),
    ("folder:/nonexistent/path", "does not exist"),
    ("synthetic:colour=red", "unknown synthetic dataset option"),
    ("tiny-imagenet", "needs data_dir"),
])
def test_bad_dataset_names(name, message):
    with pytest.raises(FeatcacheError, match=message):
        load_dataset(name)


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_folder_val_split_is_the_test_split_or_its_own_and_ignored_folders_are_named(tmp_path, val_name):
    for split in ("train", val_name):
        for cls in ("cat", "dog"):
            write_images(tmp_path / split / cls, 2)
    write_images(tmp_path / "extras" / "cat", 1)
    data = load_dataset(f"folder:{tmp_path}")
    assert list(data.splits) == ["train", "test"] and len(data.splits["test"].images) == 4
    assert len(data.notes) == 1 and "extras" in data.notes[0]
    for cls in ("cat", "dog"):
        write_images(tmp_path / "test" / cls, 1)
    data = load_dataset(f"folder:{tmp_path}")
    assert list(data.splits) == ["train", "test", "val"]
    assert [len(data.splits[s].images) for s in data.splits] == [4, 2, 4]


def test_exif_orientation_and_transparent_modes_decode_as_viewers_show_them(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, size=(10, 20, 3), dtype=np.uint8)  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (tmp_path / "a").mkdir()
    Image.fromarray(pixels).save(tmp_path / "a" / "rotated.png", exif=exif)
    write_images(tmp_path / "a", 1, size=(10, 20))  # 10 wide, 20 high: the rotated photo's size
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 50])
    palette.save(tmp_path / "a" / "palette.png", transparency=0)
    (tmp_path / "b").mkdir()
    grey = Image.fromarray(np.full((2, 2), 90, dtype=np.uint8))
    alpha = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8))
    Image.merge("LA", (grey, alpha)).save(tmp_path / "b" / "grey_alpha.png")
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "b" / "cmyk.jpg")

    data = load_dataset(f"folder:{tmp_path}")
    images = data.splits["all"].images
    names = [p.name for p in images.paths]
    decoded = {name: images.read_one(i) for i, name in enumerate(names)}
    assert np.array_equal(decoded["rotated.png"], np.rot90(pixels, k=-1))
    assert np.array_equal(decoded["palette.png"][:, :, 0], [[255, 200], [200, 255]])  # transparent: white
    assert np.array_equal(decoded["grey_alpha.png"][:, :, 1], [[255, 90], [90, 255]])
    with Image.open(tmp_path / "b" / "cmyk.jpg") as cmyk:
        assert np.array_equal(decoded["cmyk.jpg"], np.asarray(cmyk.convert("RGB")))
    from featcache.images import Framing, read_batch  # a rotated image stacks with an upright one of its shown size

    assert read_batch(FileImages([tmp_path / "a" / n for n in ("rotated.png", "img000.png")]), 0, 2, Framing(8)).shape[1:3] \
        == np.rot90(pixels, k=-1).shape[:2]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    values = np.array([[0, 128, 129, 257], [1000, 32896, 65407, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as reopened:
        assert reopened.mode == "I;16"  # what makes this test about high bit depth
    pixels = decode_image(tmp_path / "deep.png")
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 4, 3)
    assert np.array_equal(pixels[:, :, 2], np.round(values / 257))


@pytest.mark.parametrize("name", ["folder", "synthetic:classes=1"])
def test_dataset_with_one_class_is_refused(tmp_path, name):
    write_images(tmp_path / "train" / "cat", 2)
    write_images(tmp_path / "test" / "dog", 2)
    with pytest.raises(FeatcacheError, match="only one class .*at least 2"):
        load_dataset(f"folder:{tmp_path}" if name == "folder" else name)


def test_a_label_set_with_one_class_is_refused_when_chosen(root):
    """synthetic:classes=2 has two fine classes and one coarse group: it loads, and fitting coarse labels fails."""
    from featcache.evaluation import fold_indices

    data = load_dataset("synthetic:classes=2")
    with pytest.raises(FeatcacheError, match="a single class"):
        fold_indices(data.splits["train"].labels["coarse"], 2, 0)


def _write_garbage(path):
    path.write_bytes(b"this is not a tar.gz")


def _write_tar_without_folder(path):
    write_cifar100(path.parent / "flat")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(path.parent / "flat" / "meta", arcname="meta")


@pytest.mark.parametrize("write, message", [
    (_write_garbage, r"garbage.tar.gz is not a readable .tar.gz archive"),
    (_write_tar_without_folder, r"garbage.tar.gz has no cifar-100-python/meta"),
])
def test_cifar_bad_archive_is_named(tmp_path, write, message):
    write(tmp_path / "garbage.tar.gz")
    with pytest.raises(FeatcacheError, match=message):
        load_dataset("cifar100", data_dir=tmp_path / "garbage.tar.gz")


@pytest.mark.parametrize("meta", [
    {b"fine_label_names": [b"x"] * 100},  # no coarse names
    {b"fine_label_names": [b"x"] * 10, b"coarse_label_names": [b"y"] * 20},  # not 100 fine names
    {b"fine_label_names": "x" * 100, b"coarse_label_names": [b"y"] * 20},  # not a list
    ["not", "a", "dict"],
])
def test_cifar_wrong_meta_is_named(tmp_path, meta):
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    (folder / "meta").write_bytes(pickle.dumps(meta))
    with pytest.raises(FeatcacheError, match=r"cifar-100-python/meta is not .*: expected .*class names"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_cifar_wrong_batch_is_named(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    (folder / "test").write_bytes(pickle.dumps({b"data": _cifar_rows(5, 0), b"fine_labels": [0] * 5}))
    with pytest.raises(FeatcacheError, match=r"cifar-100-python/test is not .*: expected .*coarse_labels"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_image_over_pillows_pixel_limit_says_how_to_allow_it(tmp_path, monkeypatch):
    from PIL import Image

    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16 x 16 images are over twice the limit
    images = load_dataset(f"folder:{tmp_path}").splits["all"].images
    with pytest.raises(FeatcacheError, match="larger than Pillow's limit.*FEATCACHE_MAX_IMAGE_PIXELS.*skip_bad=True"):
        images.read_one(0)
    monkeypatch.setenv("FEATCACHE_MAX_IMAGE_PIXELS", "0")
    assert images.read_one(0).shape == (16, 16, 3)
    monkeypatch.setenv("FEATCACHE_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(FeatcacheError, match="FEATCACHE_MAX_IMAGE_PIXELS='many' must be"):
        images.read_one(0)


@pytest.mark.parametrize("mode, fmt", [("RGB", "png"), ("L", "png"), ("P", "png"), ("RGB", "jpg"), ("L", "jpg")])
def test_ordinary_images_decode_to_the_same_pixels_as_before(tmp_path, mode, fmt):
    from PIL import Image

    path, = write_images(tmp_path, 1, size=(12, 7), mode=mode, fmt=fmt)
    with Image.open(path) as image:
        before = np.asarray(image.convert("RGB"), dtype=np.uint8)
    assert np.array_equal(decode_image(path), before)
    assert np.array_equal(FileImages([path]).read_one(0), before)
