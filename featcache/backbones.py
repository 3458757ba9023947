"""The backbone registry: each entry is one Keras application, looked up by name.

An entry carries everything about itself: its constructor, its own ``preprocess_input``, its
default and minimum input size, the file name Keras' ImageNet loader wants in
``$KERAS_HOME/models/``, the layers where its fine-tuning blocks start, and its typed constructor
options with their rules. Feature width and parameter count are measured, not typed: they live in
:mod:`featcache.backbone_facts`. Adding a backbone is one ``Backbone(...)`` entry in ``BACKBONES``
and a run of ``python -m featcache.backbone_facts``.
"""

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from featcache.backbone_facts import FACTS
from featcache.errors import FeatcacheError, WeightsUnavailable
from featcache.params import Interval, Options, Rule, check, validate

POOLINGS = ("avg", "max")


@dataclass(frozen=True)
class Option:
    """A constructor argument: its type, default and rules (see :mod:`featcache.params`).

    ``imagenet``: the further rules with ``weights="imagenet"``, e.g. the values Keras publishes weights for.
    """

    kind: type  # converts a value given as a string (a command line's KEY=VALUE), or an int to a float
    default: object
    rules: tuple
    imagenet: tuple = ()

    def convert(self, value):
        """``value`` as the option's type where it converts; the rules judge what does not."""
        if isinstance(value, bool):
            return value
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            return value


def _alpha(published: tuple) -> Option:
    """MobileNet's width multiplier: any number > 0, but ImageNet weights only for ``published``."""
    return Option(float, 1.0, (Interval(float, 0, None, closed="neither"),), (Options(*published),))


@dataclass(frozen=True)
class Backbone:
    name: str
    module: str  # the keras.applications submodule holding preprocess_input
    constructor: str  # the class name inside keras.applications
    default_size: int
    min_size: int
    weights_file: Callable[[dict, int], str]  # (options, input size) -> ImageNet no-top file name
    blocks: tuple = ()  # regexes matching the first layer of each fine-tuning block, bottom to top
    options: dict = field(default_factory=dict)  # extra constructor arguments: name -> Option

    def keras_constructor(self):
        from featcache.backend import keras

        return getattr(keras.applications, self.constructor)

    def preprocess_input(self):
        from featcache.backend import keras

        return getattr(keras.applications, self.module).preprocess_input


def _named(file_name):
    return lambda options, size: file_name


def _mobilenet_file(options, size):
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[options["alpha"]]
    rows = size if size in (128, 160, 192, 224) else 224
    return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"


def _mobilenet_v2_file(options, size):
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{options['alpha']}_{rows}_no_top.h5"


def _numbered(pattern: str, numbers) -> tuple:
    return tuple(pattern.format(n) for n in numbers)


BACKBONES = {
    b.name: b
    for b in [
        Backbone("resnet50", "resnet50", "ResNet50", 224, 32,
                 _named("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"), _numbered("conv{}_", range(2, 6))),
        Backbone("resnet101", "resnet", "ResNet101", 224, 32,
                 _named("resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"), _numbered("conv{}_", range(2, 6))),
        Backbone("vgg16", "vgg16", "VGG16", 224, 32,
                 _named("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"), _numbered("block{}_", range(1, 6))),
        Backbone("vgg19", "vgg19", "VGG19", 224, 32,
                 _named("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"), _numbered("block{}_", range(1, 6))),
        Backbone("xception", "xception", "Xception", 299, 71,
                 _named("xception_weights_tf_dim_ordering_tf_kernels_notop.h5"), _numbered("block{}_", range(1, 15))),
        Backbone("inceptionv3", "inception_v3", "InceptionV3", 299, 75,
                 _named("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")),
        Backbone("mobilenet", "mobilenet", "MobileNet", 224, 32, _mobilenet_file,
                 _numbered("conv_(pad|dw)_{}(_|$)", range(1, 14)), {"alpha": _alpha((0.25, 0.5, 0.75, 1.0))}),
        Backbone("mobilenetv2", "mobilenet_v2", "MobileNetV2", 224, 32, _mobilenet_v2_file,
                 ("expanded_conv_", *_numbered("block_{}_", range(1, 17))),
                 {"alpha": _alpha((0.35, 0.5, 0.75, 1.0, 1.3, 1.4))}),
        Backbone("densenet121", "densenet", "DenseNet121", 224, 32,
                 _named("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"), _numbered("conv{}_", range(2, 6))),
        Backbone("efficientnetb0", "efficientnet", "EfficientNetB0", 224, 32,
                 _named("efficientnetb0_notop.h5"), _numbered("block{}a_", range(1, 8))),
    ]
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise FeatcacheError(f"unknown backbone {name!r}: choose from {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def describe() -> list[dict]:
    """One row per backbone, for listing them; builds no model (width and parameters: backbone_facts)."""
    return [{"name": b.name, "default_size": b.default_size, "min_size": b.min_size, **FACTS[b.name],
             "options": {key: option.default for key, option in b.options.items()}}
            for b in BACKBONES.values()]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that decides which features a backbone produces (part of the cache key)."""

    name: str
    input_size: int
    pooling: str = "avg"
    weights: str = "imagenet"  # "imagenet", "none" (random, seeded) or a path to a weights file
    options: tuple = ()  # sorted (key, value) pairs of constructor options, e.g. (("alpha", 0.35),)
    seed: int = 0  # only matters for weights="none"

    @property
    def backbone(self) -> Backbone:
        return get_backbone(self.name)

    def to_record(self) -> dict:
        """The spec as plain JSON (what cache provenance stores as its "backbone")."""
        return {**asdict(self), "options": dict(self.options)}

    @classmethod
    def from_record(cls, record: dict) -> "BackboneSpec":
        """The spec of :meth:`to_record`'s dict, validated again."""
        return make_spec(record["name"], record["input_size"], record["pooling"], record["weights"],
                         record["options"], record["seed"])


WEIGHTS = Rule(lambda weights: weights in ("imagenet", "none") or Path(weights).is_file(),
               "imagenet, none, or the path of an existing weights file")


def check_options(backbone: Backbone, options: dict, weights: str) -> dict:
    """``options`` converted to their types, checked against their rules, with the defaults filled in."""
    unknown = set(options) - set(backbone.options)
    if unknown:
        known = ", ".join(backbone.options) or "none"
        raise FeatcacheError(f"backbone {backbone.name} has no option {sorted(unknown)[0]!r} (options: {known})")
    values = {key: option.convert(options.get(key, option.default)) for key, option in backbone.options.items()}
    validate(values, {key: option.rules for key, option in backbone.options.items()}, owner=backbone.name)
    if weights == "imagenet":
        validate(values, {key: option.imagenet for key, option in backbone.options.items() if option.imagenet},
                 owner=f"{backbone.name} with weights='imagenet'")
    return values


def make_spec(name, input_size=None, pooling="avg", weights="imagenet", options=None, seed=0) -> BackboneSpec:
    """Validate the user's choices once and fill in the backbone's defaults; builds and downloads nothing."""
    backbone = get_backbone(name)
    values = check_options(backbone, options or {}, weights)
    size = backbone.default_size if input_size is None else input_size
    check("input_size", size, [Interval(int, backbone.min_size, None)], owner=name)
    check("pooling", pooling, [Options(*POOLINGS)])
    check("weights", weights, [WEIGHTS])
    if weights not in ("imagenet", "none"):
        weights = str(Path(weights).resolve())  # records must find it again from any folder
    return BackboneSpec(name, int(size), pooling, weights, tuple(sorted(values.items())), int(seed))


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def imagenet_weights_path(spec: BackboneSpec) -> Path:
    """Where Keras' own loader keeps (or would download) this backbone's ImageNet weights."""
    return keras_home() / "models" / spec.backbone.weights_file(dict(spec.options), spec.input_size)


def weights_sha256(spec: BackboneSpec) -> str | None:
    """Hash of the weights file the features come from; None for random weights."""
    if spec.weights == "none":
        return None
    path = imagenet_weights_path(spec) if spec.weights == "imagenet" else Path(spec.weights)
    if not path.is_file():
        return None
    from featcache.file_index import FileIndex

    index = FileIndex()  # a 100 MB weights file is hashed once, not on every cached answer
    digest = index.digest(path, "sha256")
    index.save()
    return digest


def build_feature_model(spec: BackboneSpec):
    """The Keras model mapping preprocessed float images (size x size x 3) to pooled features."""
    from featcache.backend import keras, keras_output_hidden

    backbone = spec.backbone
    options = dict(spec.options)
    shape = (spec.input_size, spec.input_size, 3)
    constructor = backbone.keras_constructor()
    if spec.weights == "imagenet":
        try:
            with keras_output_hidden():  # Keras prints its download progress on stdout
                return constructor(include_top=False, weights="imagenet", input_shape=shape,
                                   pooling=spec.pooling, **options)
        except Exception as exc:  # Keras raises plain Exception on a failed download
            if imagenet_weights_path(spec).is_file():
                raise
            raise WeightsUnavailable(
                f"cannot download {spec.name} ImageNet weights ({type(exc).__name__}): put "
                f"{imagenet_weights_path(spec).name} in {imagenet_weights_path(spec).parent}/ "
                "(or set KERAS_HOME), or give a weights file as weights=PATH"
            ) from None
    keras.utils.set_random_seed(spec.seed)
    model = constructor(include_top=False, weights=None, input_shape=shape, pooling=spec.pooling, **options)
    if spec.weights != "none":
        try:
            model.load_weights(spec.weights)
        except Exception as exc:
            raise FeatcacheError(
                f"cannot load weights file {spec.weights} into {spec.name} "
                f"(options {options or 'default'}): {str(exc).splitlines()[0]}"
            ) from None
    return model
