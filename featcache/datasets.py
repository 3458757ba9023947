"""Dataset loaders: every loader returns a :class:`Dataset` of uint8 RGB images and integer labels.

A dataset has splits ("train", "test", "val", or "all" for folders without a split), each with an
image source and one or more label sets (CIFAR-100 has "fine" and "coarse"; the others "label").
Image sources are read batch by batch, so a folder of 100,000 photos is never held in memory.
:func:`load_dataset` refuses a dataset whose training split has fewer than 2 classes.

Dataset names understood by :func:`load_dataset`:

    cifar10, cifar100       keras.datasets, or a local copy in the python format (data_dir)
    tiny-imagenet           a local tiny-imagenet-200 tree (data_dir)
    folder:PATH             class sub-folders, optionally under train/, test/ and val/ (see load_folder)
    digits                  scikit-learn's bundled 8x8 digits (no download)
    synthetic               deterministic coloured patterns for tests (synthetic:n=200,classes=4,size=32)

Image files are decoded by :func:`decode_image` alone: as a viewer shows them (EXIF orientation
applied), transparency composited on white, 16-bit images scaled to 8 bits. Pillow refuses images
over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (a guard against decompression bombs); the environment
variable FEATCACHE_MAX_IMAGE_PIXELS, when set, replaces that limit (0: no limit).
"""

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from featcache.errors import FeatcacheError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VAL_FOLDERS = ("val", "valid", "validation")  # names published sets give their validation split
PIXEL_LIMIT_VARIABLE = "FEATCACHE_MAX_IMAGE_PIXELS"


class ArrayImages:
    """Images already in memory as one uint8 array (n, h, w, 3)."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self):
        return len(self.array)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop as one array (every image has the same size)."""
        return self.array[start:stop]

    def read_one(self, index: int) -> np.ndarray:
        return self.array[index]

    def fingerprint(self) -> str:
        return _hash_bytes(np.ascontiguousarray(self.array).data, str(self.array.shape))

    known_fingerprint = stat_fingerprint = fingerprint  # in memory: hashing reads no file


class FileImages:
    """Image files decoded on demand (as RGB, at their native size) by :func:`decode_image`.

    Nothing is read when the source is made. Each file is read once: decoding hashes the same bytes
    into the file index (:mod:`featcache.file_index`), so after an extraction the fingerprint reads
    nothing, and an unchanged folder is fingerprinted from the index alone. Resizing is left to the
    image pipeline, which uses one resize for every source, so the same image gives the same features
    whichever way it arrives.
    """

    def __init__(self, paths: list[Path]):
        self.paths = paths

    @property
    def index(self):
        from featcache.file_index import FileIndex

        return FileIndex.shared()

    def __len__(self):
        return len(self.paths)

    def read_one(self, index: int) -> np.ndarray:
        path = self.paths[index]
        with self.index.reading(path) as data:
            return decode_image(path, data)

    def fingerprint(self) -> str:
        """A hash of the files' names and contents; unchanged files are not read again."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            contents = list(pool.map(self.index.digest, self.paths))
        self.index.save()
        return _hash_names(self.paths, contents)

    def known_fingerprint(self) -> str | None:
        """The fingerprint when the index knows every file as it is now (no file is read); else None."""
        index = self.index
        contents = [index.known(path) for path in self.paths]
        return None if None in contents else _hash_names(self.paths, contents)

    def stat_fingerprint(self) -> str:
        """A hash of the files' names and stats: the same files, untouched, give the same value."""
        index = self.index
        return _hash_names(self.paths, [index.stat_text(path) for path in self.paths])

    def save_index(self) -> None:
        self.index.save()


@dataclass
class Split:
    images: object  # ArrayImages or FileImages
    labels: dict[str, np.ndarray]  # label set name -> int64 array, one per image


@dataclass
class Dataset:
    name: str
    splits: dict[str, Split]
    class_names: dict[str, list[str]]  # label set name -> class names, indexed by label
    skipped: list[str] = field(default_factory=list)  # undecodable files left out (with skip_bad)
    notes: list[str] = field(default_factory=list)  # warnings for the user, e.g. sub-folders left out

    @property
    def label_sets(self) -> list[str]:
        return list(self.class_names)

    @property
    def train_split(self) -> str:
        """"train", or the only split of a dataset without one (a folder without train/ and test/)."""
        return "train" if "train" in self.splits else next(iter(self.splits))

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the images, labels and class names (not of the name or where it lives), computed once."""
        return self._combined(lambda images: images.fingerprint())

    def known_fingerprint(self) -> str | None:
        """:attr:`fingerprint` when it can be had without reading an image file, else None."""
        return self._combined(lambda images: images.known_fingerprint())

    def stat_fingerprint(self) -> str:
        """Like :attr:`fingerprint`, with files taken by their stat: stable while they are untouched."""
        return self._combined(lambda images: images.stat_fingerprint())

    def remember_hashes(self) -> None:
        """Keep the file hashes taken while decoding (image files only)."""
        for split in self.splits.values():
            getattr(split.images, "save_index", lambda: None)()

    def _combined(self, image_hash) -> str | None:
        """The hash of every split's images (by ``image_hash``; None if it gives None for one), labels and
        class names."""
        digest = hashlib.blake2b(digest_size=16)
        for split_name, split in sorted(self.splits.items()):
            images = image_hash(split.images)
            if images is None:
                return None
            digest.update(split_name.encode())
            digest.update(images.encode())
            for label_set, labels in sorted(split.labels.items()):
                digest.update(label_set.encode())
                digest.update(np.asarray(labels, dtype=np.int64).tobytes())
        for label_set, names in sorted(self.class_names.items()):
            digest.update(("\0".join([label_set, *names])).encode())
        return digest.hexdigest()


def _hash_names(paths, contents) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path, content in zip(paths, contents):
        digest.update(path.name.encode())
        digest.update(content.encode())
    return digest.hexdigest()


def load_dataset(name: str, data_dir=None, skip_bad: bool = False) -> Dataset:
    """Load a dataset by name (see the module docstring)."""
    loaders = {
        "cifar10": lambda: load_cifar("cifar10", data_dir),
        "cifar100": lambda: load_cifar("cifar100", data_dir),
        "tiny-imagenet": lambda: load_tiny_imagenet(data_dir, skip_bad=skip_bad),
        "digits": load_digits,
    }
    if name.startswith("folder:"):
        dataset = load_folder(name[len("folder:"):], skip_bad=skip_bad)
    elif name.startswith("synthetic"):
        dataset = load_synthetic(**_parse_options(name[len("synthetic"):].lstrip(":")))
    elif name in loaders:
        dataset = loaders[name]()
    else:
        raise FeatcacheError(
            f"unknown dataset {name!r}: choose from {', '.join(loaders)}, folder:PATH or synthetic"
        )
    _require_two_classes(dataset)
    return dataset


def _require_two_classes(dataset: Dataset):
    """Refuse a dataset none of whose label sets has two classes in its training split (a label set
    with one class, such as synthetic:classes=2's coarse labels, is refused later, when chosen)."""
    split = dataset.train_split
    present = {label_set: np.unique(labels) for label_set, labels in dataset.splits[split].labels.items()}
    if all(len(classes) < 2 for classes in present.values()):
        label_set, classes = next(iter(present.items()))
        raise FeatcacheError(
            f"{dataset.name} has only one class ({dataset.class_names[label_set][classes[0]]!r}) in its {split} "
            "split: a classifier needs at least 2 (for a folder, one sub-folder of images per class)"
        )


# --- CIFAR ------------------------------------------------------------------------------------

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR = {
    # name: (folder inside the archive, keras loader's cache folder, train files, test file, meta file)
    "cifar10": ("cifar-10-batches-py", "cifar-10-batches-py-target",
                [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"),
    "cifar100": ("cifar-100-python", "cifar-100-python-target", ["train"], "test", "meta"),
}
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)  # what a damaged .tar.gz raises
CIFAR_LABELS = {  # label set -> (key in the batch files, key in the meta file, number of classes)
    "cifar10": {"label": ("labels", "label_names", 10)},
    "cifar100": {"fine": ("fine_labels", "fine_label_names", 100),
                 "coarse": ("coarse_labels", "coarse_label_names", 20)},
}


def load_cifar(name: str, data_dir=None) -> Dataset:
    """CIFAR in its published python format: a local folder or .tar.gz, else keras.datasets."""
    folder_name = CIFAR[name][0]
    expected = f"expected the {folder_name} folder or its .tar.gz (from {CIFAR_URL})"
    if data_dir is None:
        return _read_cifar(name, _PickleFolder(_keras_cifar_folder(name)))
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / folder_name):
        if (candidate / CIFAR[name][4]).is_file():
            return _read_cifar(name, _PickleFolder(candidate))
    for candidate in (data_dir, data_dir / f"{folder_name.replace('-batches', '')}.tar.gz",
                      data_dir / f"{folder_name}.tar.gz"):
        if candidate.is_file() and candidate.name.endswith(".tar.gz"):
            try:
                archive = tarfile.open(candidate)
            except ARCHIVE_ERRORS:
                raise FeatcacheError(f"{candidate} is not a readable .tar.gz archive: {expected}") from None
            with archive:
                return _read_cifar(name, _PickleTar(archive, folder_name))
    raise FeatcacheError(f"no {name} in {data_dir}: {expected}")


def _keras_cifar_folder(name: str) -> Path:
    """Let keras.datasets download and unpack CIFAR, then read its unpacked python files ourselves."""
    from featcache.backend import keras

    try:
        getattr(keras.datasets, name).load_data()
    except Exception as exc:  # Keras raises plain Exception when the download fails
        raise FeatcacheError(
            f"cannot download {name} ({type(exc).__name__}): download the python version from "
            f"{CIFAR_URL} and give its folder as data_dir"
        ) from None
    from featcache.backbones import keras_home

    return keras_home() / "datasets" / CIFAR[name][1] / CIFAR[name][0]


class _PickleFolder:
    def __init__(self, folder: Path):
        self.folder = folder

    def where(self, member: str) -> str:
        return str(self.folder / member)

    def load(self, member: str):
        path = self.folder / member
        if not path.is_file():
            raise FeatcacheError(f"{path} is missing: expected the whole {self.folder.name} folder (from {CIFAR_URL})")
        return _unpickle(path.read_bytes(), self.where(member))


class _PickleTar:
    def __init__(self, archive: tarfile.TarFile, folder_name: str):
        self.archive, self.folder_name = archive, folder_name

    def where(self, member: str) -> str:
        return f"{self.folder_name}/{member} in {self.archive.name}"

    def load(self, member: str):
        name = f"{self.folder_name}/{member}"
        try:
            data = self.archive.extractfile(name).read()
        except KeyError:
            raise FeatcacheError(f"{self.archive.name} has no {name}: not a CIFAR archive (from {CIFAR_URL})") from None
        except ARCHIVE_ERRORS:
            raise FeatcacheError(f"{self.archive.name} is damaged (reading {name}): download it again") from None
        return _unpickle(data, self.where(member))


def _unpickle(data: bytes, where: str):
    try:
        return pickle.loads(data, encoding="bytes")
    except Exception:
        raise FeatcacheError(f"{where} is not in the python pickle format: expected CIFAR's python version") from None


def _cifar_field(content, key: str, where: str, expected: str, valid):
    """``content[key]`` of an unpickled CIFAR file, if ``valid`` accepts it; else an error naming the file."""
    value = content.get(key.encode()) if isinstance(content, dict) else None
    if value is None or not valid(value):
        raise FeatcacheError(f"{where} is not a CIFAR python file: expected {key!r}, {expected}")
    return value


def _read_cifar(name: str, source) -> Dataset:
    _, _, train_files, test_file, meta_file = CIFAR[name]
    label_keys = CIFAR_LABELS[name]
    meta = source.load(meta_file)
    class_names = {
        label_set: [n.decode() for n in _cifar_field(
            meta, key, source.where(meta_file), f"a list of {count} class names",
            lambda v: isinstance(v, list) and len(v) == count and all(isinstance(n, bytes) for n in v))]
        for label_set, (_, key, count) in label_keys.items()
    }
    splits = {}
    for split, members in (("train", train_files), ("test", [test_file])):
        rows, labels = [], {label_set: [] for label_set in label_keys}
        for member in members:
            batch, where = source.load(member), source.where(member)
            data = _cifar_field(batch, "data", where, "a uint8 array of rows of 3072 pixel values",
                                lambda v: isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
                                and v.shape[1] == 3072)
            rows.append(data)
            for label_set, (key, _, count) in label_keys.items():
                labels[label_set].append(np.asarray(_cifar_field(
                    batch, key, where, f"a list of {len(data)} labels from 0 to {count - 1}",
                    lambda v: isinstance(v, list) and len(v) == len(data) and np.isin(v, range(count)).all()),
                    dtype=np.int64))
        images = np.concatenate(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = {label_set: np.concatenate(parts) for label_set, parts in labels.items()}
        splits[split] = Split(ArrayImages(np.ascontiguousarray(images)), labels)
    return Dataset(name, splits, class_names)


# --- image folders ----------------------------------------------------------------------------


def load_folder(path, skip_bad: bool = False) -> Dataset:
    """Class sub-folders of images, either directly under PATH (one split "all") or under split folders.

    The split folders are train/ and test/, and next to train/ a validation folder (val/, valid/ or
    validation/): without test/ it is the held-out split, named "test" so every stage uses it as one;
    with test/ it is a split of its own, "val". Other sub-folders beside split folders are left out,
    each named in the dataset's ``notes``.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FeatcacheError(f"dataset folder {root} does not exist")
    split_roots, notes = _split_folders(root)
    class_names = sorted({d.name for r in split_roots.values() for d in r.iterdir() if d.is_dir()})
    if not class_names:
        raise FeatcacheError(f"{root} has no class sub-folders: expected {root}/<class>/<image files>")
    files = {
        split: [(f, label) for label, cls in enumerate(class_names) for f in _image_files(r / cls)]
        for split, r in split_roots.items()
    }
    for split, entries in files.items():
        if not entries:
            raise FeatcacheError(f"{split_roots[split]} holds no image files")
    dataset = _file_dataset(f"folder:{root.name}", files, {"label": class_names}, skip_bad)
    dataset.notes += notes
    return dataset


def _split_folders(root: Path) -> tuple[dict[str, Path], list[str]]:
    """Split name -> its folder (see :func:`load_folder`), and a note naming sub-folders left out."""
    folders = {d.name: d for d in sorted(root.iterdir()) if d.is_dir()}
    splits = {s: folders[s] for s in ("train", "test") if s in folders}
    if not splits:
        return {"all": root}, []
    val = next((folders[n] for n in VAL_FOLDERS if n in folders and "train" in splits), None)
    if val:
        splits["val" if "test" in splits else "test"] = val
    ignored = [name for name, folder in folders.items() if folder not in splits.values()]
    notes = [f"left out sub-folders of {root}: {', '.join(ignored)} "
             f"(the split folders are train, test and one of {', '.join(VAL_FOLDERS)})"]
    return splits, notes if ignored else []


def load_tiny_imagenet(data_dir, skip_bad: bool = False) -> Dataset:
    """A local tiny-imagenet-200 tree in its published layout (the val split becomes "test")."""
    if data_dir is None:
        raise FeatcacheError("tiny-imagenet needs data_dir: the tiny-imagenet-200 folder")
    root = Path(data_dir)
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    for required in ("wnids.txt", "words.txt", "train", "val/val_annotations.txt"):
        if not (root / required).exists():
            raise FeatcacheError(f"{root} is not a tiny-imagenet-200 tree: {required} is missing")
    wnids = (root / "wnids.txt").read_text().split()
    words = dict(line.split("\t", 1) for line in (root / "words.txt").read_text().splitlines() if "\t" in line)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train = [(f, index[w]) for w in wnids for f in _image_files(root / "train" / w / "images")]
    test = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            test.append((root / "val" / "images" / fields[0], index[fields[1]]))
    names = [words.get(w, w).strip() for w in wnids]
    return _file_dataset("tiny-imagenet", {"train": train, "test": test}, {"label": names}, skip_bad)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _file_dataset(name, files, class_names, skip_bad) -> Dataset:
    """Build the splits of a file-based dataset from (path, label) pairs per split."""
    splits, skipped = {}, []
    for split, entries in files.items():
        images, kept, bad = open_images([f for f, _ in entries], skip_bad)
        if not kept:
            raise FeatcacheError(f"no decodable images in the {split} split of {name}")
        skipped += bad
        labels = np.array([entries[i][1] for i in kept], dtype=np.int64)
        splits[split] = Split(images, {"label": labels})
    return Dataset(name, splits, class_names, skipped)


class ImageError(FeatcacheError):
    """An image file that cannot be used (``skip_bad`` leaves such files out)."""


def open_images(paths: list[Path], skip_bad: bool = False) -> tuple[FileImages, list[int], list[str]]:
    """The image files as a source. With ``skip_bad`` every file is decoded first (in parallel) and those
    that cannot be are left out; without, nothing is read now, and a file that cannot be decoded is an
    error naming it when the pipeline reaches it. Returns the images, the indices of the kept paths,
    and the skipped paths."""
    if not skip_bad:
        return FileImages(list(paths)), list(range(len(paths))), []
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(_problem, paths))
    kept = [i for i, problem in enumerate(problems) if problem is None]
    return FileImages([paths[i] for i in kept]), kept, [str(p) for p, problem in zip(paths, problems) if problem]


def _problem(path: Path):
    """None when the file decodes, else the :class:`ImageError` saying why it cannot be used."""
    try:
        decode_image(path)
    except ImageError as exc:
        return exc
    return None


def decode_image(path, data: bytes | None = None) -> np.ndarray:
    """The image file as a uint8 (height, width, 3) RGB array, as an image viewer shows it.

    The EXIF orientation is applied; transparency (RGBA, LA, a palette's or a colour's tRNS) is
    composited on white; integer images of more than 8 bits (I;16, I) are taken as 16-bit and scaled
    to 0..255 (v / 257, rounded); every other mode (L, P, CMYK, ...) goes through Pillow's RGB conversion.
    """
    from PIL import Image, ImageOps

    limit = os.environ.get(PIXEL_LIMIT_VARIABLE)
    if limit is not None:
        if not limit.isdigit():
            raise FeatcacheError(f"{PIXEL_LIMIT_VARIABLE}={limit!r} must be a whole number of pixels (0: no limit)")
        Image.MAX_IMAGE_PIXELS = int(limit) or None
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"image {path} is larger than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            f"(Image.MAX_IMAGE_PIXELS): allow it with the environment variable {PIXEL_LIMIT_VARIABLE} "
            "(a number of pixels, 0 for no limit), or leave such files out with skip_bad=True"
        ) from None
    except Exception:  # Pillow raises many kinds for broken files
        raise ImageError(f"cannot decode image {path}: fix or remove it, or leave such files out with "
                         "skip_bad=True") from None
    if image.mode.startswith("I"):
        grey = np.clip((np.asarray(image).astype(np.int64) + 128) // 257, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.has_transparency_data:
        rgba, image = image.convert("RGBA"), Image.new("RGB", image.size, "white")
        image.paste(rgba, mask=rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


# --- bundled and synthetic --------------------------------------------------------------------


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits as RGB (no download): a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    test = np.arange(len(images)) % 5 == 0
    splits = {
        "train": Split(ArrayImages(images[~test]), {"label": labels[~test]}),
        "test": Split(ArrayImages(images[test]), {"label": labels[test]}),
    }
    return Dataset("digits", splits, {"label": [str(d) for d in range(10)]})


def load_synthetic(n: int = 200, classes: int = 4, size: int = 32, seed: int = 0) -> Dataset:
    """Deterministic coloured blobs: each class has its own colour and position, plus noise.

    Two label sets ("fine" and "coarse", where coarse = fine // 2) so label-set handling is testable.
    """
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 255, size=(classes, 3))
    centres = rng.integers(size // 4, 3 * size // 4, size=(classes, 2))
    yy, xx = np.mgrid[:size, :size]

    def make(count):
        labels = np.arange(count) % classes
        images = rng.normal(60, 25, size=(count, size, size, 3))
        for i, label in enumerate(labels):
            blob = (yy - centres[label, 0]) ** 2 + (xx - centres[label, 1]) ** 2 < (size // 5) ** 2
            images[i][blob] = colours[label]
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    splits = {}
    for split, count in (("train", n), ("test", max(n // 4, classes))):
        images, labels = make(count)
        splits[split] = Split(ArrayImages(images), {"fine": labels, "coarse": labels // 2})
    names = {"fine": [f"class{c}" for c in range(classes)],
             "coarse": [f"group{c}" for c in range((classes + 1) // 2)]}
    return Dataset(f"synthetic-n{n}-c{classes}-s{size}-r{seed}", splits, names)


def _parse_options(text: str) -> dict:
    """'n=200,classes=4' -> {'n': 200, 'classes': 4}."""
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise FeatcacheError(f"dataset option {item!r} must look like key=value")
        if key not in ("n", "classes", "size", "seed"):
            raise FeatcacheError(f"unknown synthetic dataset option {key!r} (n, classes, size, seed)")
        if not value.isdigit():
            raise FeatcacheError(f"synthetic dataset option {key} must be a whole number, got {value!r}")
        options[key] = int(value)
    return options


def _hash_bytes(data, extra: str = "") -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(extra.encode())
    digest.update(data)
    return digest.hexdigest()
