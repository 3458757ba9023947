"""The backbone registry: every keras.applications family, KerasHub presets, and third-party plug-ins.

Every backbone answers the same questions (:class:`Backbone`): its preprocessing, its default and
minimum input size, where its pretrained weights lie (hashed into the cache key), the layers where
its fine-tuning blocks start, its pooled outputs and typed constructor options, and how to build
the Keras model that maps preprocessed images to pooled features. Three kinds implement them:

- :class:`Application`, one line per keras.applications model in ``BACKBONES``. What Keras knows
  (weights URLs and file names) is read from Keras' own modules; what needs a built model (feature
  width, parameter count) is measured into :mod:`featcache.backbone_facts`, so listing builds nothing.
- ``hub:PRESET``, a KerasHub preset (:mod:`featcache.hub`, the ``featcache[hub]`` extra).
- :class:`Plugin`, declared by a third-party package under the ``featcache.backbones`` entry points.
"""

import ast
import functools
import hashlib
import importlib.util
import os
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from featcache.backbone_facts import FACTS
from featcache.errors import FeatcacheError, WeightsUnavailable
from featcache.params import Interval, Options, Rule, check, validate

POOLINGS = ("avg", "max")  # a convolutional backbone's global pooling; hub presets have their own
HUB_PREFIX = "hub:"  # what a user types; a hub backbone's name is "hub." and the preset's name (a Keras scope name)
HUB_NAME = "hub."
ENTRY_POINT_GROUP = "featcache.backbones"


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


class Backbone:
    """What extraction, fine-tuning, predict and export ask of a backbone, whatever its kind.

    Subclasses are frozen dataclasses with the fields ``name``, ``module`` (names its preprocessing in the
    cache key), ``default_size``, ``min_size``, ``blocks`` (regexes matching the first layer of each
    fine-tuning block, bottom to top; empty: every layer with weights is a block) and ``options``.
    """

    poolings = POOLINGS  # the first is the default
    pretrained = "imagenet"  # what ``weights`` is called for its own pretrained weights
    preset = ""  # a hub backbone's preset (recorded in its spec)
    preprocessing_in_model = False  # the model normalises 0..255 pixels itself; preprocess_input is identity

    def preprocess_input(self) -> Callable:
        """float32 0..255 batches, already resized -> the model's input (per-pixel affine or identity)."""
        raise NotImplementedError

    def build(self, spec: "BackboneSpec", pretrained: bool):
        """The feature model, with its pretrained weights or freshly initialised."""
        raise NotImplementedError

    def pretrained_files(self, spec: "BackboneSpec") -> list[Path]:
        """The files the pretrained weights are read from (what the cache key hashes)."""
        raise NotImplementedError

    def source(self) -> str:
        """Where the pretrained weights come from, for listing."""
        raise NotImplementedError

    def size_rules(self) -> list:
        return [Interval(int, self.min_size, None)]

    @property
    def preprocessing(self) -> str:
        """What the preprocessing is, for provenance."""
        return "inside the model" if self.preprocessing_in_model else f"{self.module}.preprocess_input"


def load_weights_file(model, path, owner: str):
    try:
        model.load_weights(path)
    except Exception as exc:
        raise FeatcacheError(f"cannot load weights file {path} into {owner}: {str(exc).splitlines()[0]}") from None
    return model


@dataclass(frozen=True)
class Application(Backbone):
    """A keras.applications model."""

    name: str
    module: str  # the keras.applications submodule holding preprocess_input
    constructor: str  # the class name inside keras.applications
    default_size: int
    min_size: int
    weights_url: Callable[[dict, int], str]  # (options, input size) -> the ImageNet no-top file's URL
    blocks: tuple = ()
    options: dict = field(default_factory=dict)  # extra constructor arguments: name -> Option
    preprocessing_in_model: bool = False

    def keras_constructor(self):
        from featcache.backend import keras

        return getattr(keras.applications, self.constructor)

    def preprocess_input(self):
        from featcache.backend import keras

        return getattr(keras.applications, self.module).preprocess_input

    def weights_file(self, options: dict, size: int) -> str:
        return self.weights_url(options, size).rsplit("/", 1)[1]

    def pretrained_files(self, spec):
        return [keras_home() / "models" / self.weights_file(dict(spec.options), spec.input_size)]

    def source(self):
        return self.weights_url({key: option.default for key, option in self.options.items()}, self.default_size)

    def build(self, spec, pretrained):
        from featcache.backend import keras_output_hidden

        arguments = dict(include_top=False, input_shape=(spec.input_size, spec.input_size, 3), pooling=spec.pooling,
                         **dict(spec.options))
        if not pretrained:
            return self.keras_constructor()(weights=None, **arguments)
        try:
            with keras_output_hidden():  # Keras prints its download progress on stdout
                return self.keras_constructor()(weights="imagenet", **arguments)
        except Exception as exc:  # Keras raises plain Exception on a failed download
            path = self.pretrained_files(spec)[0]
            if path.is_file():
                raise
            raise WeightsUnavailable(
                f"cannot download {spec.name} ImageNet weights ({type(exc).__name__}): put {path.name} in "
                f"{path.parent}/ (or set KERAS_HOME), or give a weights file as weights=PATH"
            ) from None


@dataclass(frozen=True)
class Plugin(Backbone):
    """A third-party backbone, declared under the ``featcache.backbones`` entry points (see the README).

    ``constructor(input_shape=(s, s, 3), pooling=..., **options)`` returns the feature model with fresh
    weights; ``weights_file`` (a path, or a path relative to the plug-in's module) holds its pretrained
    weights, loaded with ``model.load_weights`` and hashed into the cache key like any weights file.
    ``name`` and ``module`` are filled in from the entry point.
    """

    constructor: Callable
    preprocess: Callable  # float32 0..255 batch -> the model's input, per-pixel affine or identity
    default_size: int
    min_size: int
    weights_file: str
    blocks: tuple = ()
    options: dict = field(default_factory=dict)
    poolings: tuple = POOLINGS
    name: str = ""
    module: str = ""

    def preprocess_input(self):
        return self.preprocess

    def pretrained_files(self, spec):
        path = Path(self.weights_file)
        if not path.is_absolute():
            path = Path(importlib.import_module(self.module.split(":")[0]).__file__).parent / path
        return [path]

    def source(self):
        return str(self.pretrained_files(None)[0])

    def build(self, spec, pretrained):
        model = self.constructor(input_shape=(spec.input_size, spec.input_size, 3), pooling=spec.pooling,
                                 **dict(spec.options))
        return load_weights_file(model, self.pretrained_files(spec)[0], spec.name) if pretrained else model


@functools.cache
def keras_constants(module: str) -> dict:
    """The string constants of a keras.applications module (weights URLs), read from its source: listing
    backbones imports neither Keras nor TensorFlow."""
    path = Path(importlib.util.find_spec("keras").submodule_search_locations[0], "src", "applications", f"{module}.py")
    found = {}

    def value(node):
        if isinstance(node, ast.JoinedStr):  # f"{BASE_WEIGHTS_PATH}file.h5"
            return "".join(value(part.value if isinstance(part, ast.FormattedValue) else part) for part in node.values)
        return found[node.id] if isinstance(node, ast.Name) else ast.literal_eval(node)

    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [type(t) for t in node.targets] == [ast.Name]:
            try:
                found[node.targets[0].id] = value(node.value)
            except (KeyError, ValueError, AttributeError):
                pass  # not a constant string
    return found


def _constant(module: str, constant: str):
    """A weights URL Keras keeps as a constant of its application module."""
    return lambda options, size: keras_constants(module)[constant]


def _under(module: str, file_name: str, base: str = "BASE_WEIGHTS_PATH"):
    """A file under the base URL of Keras' application module (the file name is formatted in Keras' code)."""
    return lambda options, size: _constant(module, base)(options, size) + file_name.format(**options)


def _mobilenet_url(options, size):
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[options["alpha"]]
    rows = size if size in (128, 160, 192, 224) else 224
    return _under("mobilenet", f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5", "BASE_WEIGHT_PATH")(options, size)


def _mobilenet_v2_url(options, size):
    rows = size if size in (96, 128, 160, 192, 224) else 224
    file_name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{options['alpha']}_{rows}_no_top.h5"
    return _under("mobilenet_v2", file_name, "BASE_WEIGHT_PATH")(options, size)


def _numbered(pattern: str, numbers) -> tuple:
    return tuple(pattern.format(n) for n in numbers)


def _resnet(name, constructor, module="resnet"):
    return Application(name, module, constructor, 224, 32,
                       _under("resnet", f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                       _numbered("conv{}_", range(2, 6)))


def _densenet(depth):
    return Application(f"densenet{depth}", "densenet", f"DenseNet{depth}", 224, 32,
                       _constant("densenet", f"DENSENET{depth}_WEIGHT_PATH_NO_TOP"), _numbered("conv{}_", range(2, 6)))


def _convnext(size_name, constructor):
    name = f"convnext_{size_name}"
    return Application(name.replace("_", ""), "convnext", constructor, 224, 32, _under("convnext", f"{name}_notop.h5"),
                       (f"{name}_stage_0_", *_numbered(name + "_downsampling_block_{}", range(3))),
                       preprocessing_in_model=True)


def _efficientnet(variant, default_size):
    return Application(f"efficientnet{variant}", "efficientnet", f"EfficientNet{variant.upper()}", default_size, 32,
                       _under("efficientnet", f"efficientnet{variant}_notop.h5"), _numbered("block{}a_", range(1, 8)),
                       preprocessing_in_model=True)


def _efficientnet_v2(variant, default_size, stages):
    return Application(f"efficientnetv2{variant}", "efficientnet_v2", f"EfficientNetV2{variant.upper()}",
                       default_size, 32, _under("efficientnet_v2", f"efficientnetv2-{variant}_notop.h5"),
                       _numbered("block{}a_", range(1, stages + 1)), preprocessing_in_model=True)


def _mobilenet_v3(size_name, blocks):
    return Application(f"mobilenetv3{size_name}", "mobilenet_v3", f"MobileNetV3{size_name.title()}", 224, 32,
                       _under("mobilenet_v3", f"weights_mobilenet_v3_{size_name}_224_{{alpha}}_float_no_top_v2.h5",
                              "BASE_WEIGHT_PATH"),
                       ("expanded_conv_", *_numbered("expanded_conv_{}_", range(1, blocks))),
                       {"alpha": _alpha((0.75, 1.0))}, preprocessing_in_model=True)


BACKBONES = {
    b.name: b
    for b in [
        _resnet("resnet50", "ResNet50", "resnet50"),
        _resnet("resnet101", "ResNet101"),
        Application("vgg16", "vgg16", "VGG16", 224, 32, _constant("vgg16", "WEIGHTS_PATH_NO_TOP"),
                    _numbered("block{}_", range(1, 6))),
        Application("vgg19", "vgg19", "VGG19", 224, 32, _constant("vgg19", "WEIGHTS_PATH_NO_TOP"),
                    _numbered("block{}_", range(1, 6))),
        Application("xception", "xception", "Xception", 299, 71, _constant("xception", "WEIGHTS_PATH_NO_TOP"),
                    _numbered("block{}_", range(1, 15))),
        Application("inceptionv3", "inception_v3", "InceptionV3", 299, 75,
                    _constant("inception_v3", "WEIGHTS_PATH_NO_TOP")),
        Application("mobilenet", "mobilenet", "MobileNet", 224, 32, _mobilenet_url,
                    _numbered("conv_(pad|dw)_{}(_|$)", range(1, 14)), {"alpha": _alpha((0.25, 0.5, 0.75, 1.0))}),
        Application("mobilenetv2", "mobilenet_v2", "MobileNetV2", 224, 32, _mobilenet_v2_url,
                    ("expanded_conv_", *_numbered("block_{}_", range(1, 17))),
                    {"alpha": _alpha((0.35, 0.5, 0.75, 1.0, 1.3, 1.4))}),
        _densenet(121),
        _efficientnet("b0", 224),
        # the families added after the first ten, smallest first within a family
        _resnet("resnet152", "ResNet152"),
        _resnet("resnet50v2", "ResNet50V2", "resnet_v2"),
        _resnet("resnet101v2", "ResNet101V2", "resnet_v2"),
        _resnet("resnet152v2", "ResNet152V2", "resnet_v2"),
        _densenet(169),
        _densenet(201),
        *(_efficientnet(f"b{n}", size) for n, size in enumerate((240, 260, 300, 380, 456, 528, 600), start=1)),
        _efficientnet_v2("b0", 224, 6),
        _efficientnet_v2("b1", 240, 6),
        _efficientnet_v2("b2", 260, 6),
        _efficientnet_v2("b3", 300, 6),
        _efficientnet_v2("s", 384, 6),
        _efficientnet_v2("m", 480, 7),
        _efficientnet_v2("l", 480, 7),
        _convnext("tiny", "ConvNeXtTiny"),
        _convnext("small", "ConvNeXtSmall"),
        _convnext("base", "ConvNeXtBase"),
        _convnext("large", "ConvNeXtLarge"),
        _convnext("xlarge", "ConvNeXtXLarge"),
        _mobilenet_v3("small", 11),
        _mobilenet_v3("large", 15),
        Application("nasnetmobile", "nasnet", "NASNetMobile", 224, 32,
                    _constant("nasnet", "NASNET_MOBILE_WEIGHT_PATH_NO_TOP")),
        Application("nasnetlarge", "nasnet", "NASNetLarge", 331, 32,
                    _constant("nasnet", "NASNET_LARGE_WEIGHT_PATH_NO_TOP")),
        Application("inceptionresnetv2", "inception_resnet_v2", "InceptionResNetV2", 299, 75,
                    _under("inception_resnet_v2", "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           "BASE_WEIGHT_URL")),
    ]
}


def plugins() -> dict:
    """The third-party backbones by entry-point name; read on every call, so a package installed while
    Python runs is seen."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BACKBONES}


def _plugged_in(entry_point) -> Plugin:
    try:
        backbone = entry_point.load()
    except Exception as error:
        raise FeatcacheError(f"the plugged-in backbone {entry_point.name!r} ({entry_point.value}) failed to load: "
                             f"{error}") from None
    if not isinstance(backbone, Plugin):
        raise FeatcacheError(f"the plugged-in backbone {entry_point.name!r} ({entry_point.value}) is not a "
                             "featcache.backbones.Plugin")
    return replace(backbone, name=entry_point.name, module=entry_point.value)


def get_backbone(name: str) -> Backbone:
    if name.startswith((HUB_PREFIX, HUB_NAME)):
        from featcache import hub

        return hub.backbone(name[len(HUB_PREFIX):])  # "hub:" and "hub." are as long
    if name in BACKBONES:
        return BACKBONES[name]
    plugged = plugins()
    if name not in plugged:
        known = ", ".join([*BACKBONES, *sorted(plugged)])
        raise FeatcacheError(f"unknown backbone {name!r}: choose from {known}, or hub:PRESET")
    return _plugged_in(plugged[name])


def describe() -> list[dict]:
    """One row per built-in and plugged-in backbone, for listing them; builds no model (width and parameters
    of the built-in ones: backbone_facts; a plug-in's are unknown until built)."""
    unknown = {"width": None, "parameters": None}
    entries = [*BACKBONES.values(), *(_plugged_in(ep) for _, ep in sorted(plugins().items()))]
    return [{"name": b.name, "default_size": b.default_size, "min_size": b.min_size, **FACTS.get(b.name, unknown),
             "options": {key: option.default for key, option in b.options.items()},
             "preprocessing": b.preprocessing, "weights": b.source()}
            for b in entries]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that decides which features a backbone produces (part of the cache key)."""

    name: str
    input_size: int
    pooling: str = "avg"
    weights: str = "imagenet"  # the backbone's pretrained weights, "none" (random, seeded) or a weights file
    options: tuple = ()  # sorted (key, value) pairs of constructor options, e.g. (("alpha", 0.35),)
    seed: int = 0  # only matters for weights="none"
    preset: str = ""  # hub backbones: the preset's versioned handle or folder
    resize: str = "stretch"  # "stretch" to the square, or "crop": shorter side to size / CROP_FRACTION, centre crop

    @property
    def backbone(self) -> Backbone:
        return get_backbone(HUB_PREFIX + self.preset if self.preset else self.name)

    def to_record(self) -> dict:
        """The spec as plain JSON (what cache provenance stores as its "backbone"); ``preset`` only for hub ones,
        ``resize`` only when it is not the default stretch (so earlier records and keys are unchanged)."""
        record = {**asdict(self), "options": dict(self.options)}
        return {key: value for key, value in record.items()
                if not (key == "preset" and not self.preset or key == "resize" and self.resize == "stretch")}

    @classmethod
    def from_record(cls, record: dict) -> "BackboneSpec":
        """The spec of :meth:`to_record`'s dict, validated again."""
        name = HUB_PREFIX + record["preset"] if record.get("preset") else record["name"]
        return make_spec(name, record["input_size"], record["pooling"], record["weights"], record["options"],
                         record["seed"], record.get("resize", "stretch"))


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


RESIZES = ("stretch", "crop")
CROP_FRACTION = 0.875  # timm's default crop_pct: the centre 87.5% of the shorter side, as most backbones were evaluated


def make_spec(name, input_size=None, pooling=None, weights="imagenet", options=None, seed=0,
              resize="stretch") -> BackboneSpec:
    """Validate the user's choices once and fill in the backbone's defaults (pooling: its first); builds and
    downloads nothing (a hub preset's small config files excepted).

    ``weights="imagenet"`` means the backbone's own pretrained weights (for a hub preset, ``"preset"``).
    """
    backbone = get_backbone(name)
    if weights == "imagenet":
        weights = backbone.pretrained
    values = check_options(backbone, options or {}, weights)
    size = backbone.default_size if input_size is None else input_size
    check("input_size", size, backbone.size_rules(), owner=backbone.name)
    pooling = backbone.poolings[0] if pooling is None else pooling
    check("pooling", pooling, [Options(*backbone.poolings)], owner=backbone.name)
    check("weights", weights, [Rule(lambda w: w in (backbone.pretrained, "none") or Path(w).is_file(),
                                    f"{backbone.pretrained}, none, or the path of an existing weights file")])
    if weights not in (backbone.pretrained, "none"):
        weights = str(Path(weights).resolve())  # records must find it again from any folder
    check("resize", resize, [Options(*RESIZES)])
    return BackboneSpec(backbone.name, int(size), pooling, weights, tuple(sorted(values.items())), int(seed),
                        backbone.preset, resize)


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def imagenet_weights_path(spec: BackboneSpec) -> Path:
    """Where the backbone's pretrained weights file lies (Keras' loader keeps or downloads it there)."""
    return spec.backbone.pretrained_files(spec)[0]


def weights_sha256(spec: BackboneSpec) -> str | None:
    """Hash of the weights the features come from (a hub preset: of its files); None for random weights
    and for pretrained weights not downloaded yet."""
    if spec.weights == "none":
        return None
    files = spec.backbone.pretrained_files(spec) if spec.weights == spec.backbone.pretrained else [Path(spec.weights)]
    if not all(path.is_file() for path in files):
        return None
    from featcache.file_index import FileIndex

    index = FileIndex.shared()  # a 100 MB weights file is hashed once, not on every cached answer
    digests = [index.digest(path, "sha256") for path in files]
    index.save()
    if len(files) == 1:
        return digests[0]
    listing = "\n".join(f"{path.name} {digest}" for path, digest in zip(files, digests))
    return hashlib.sha256(listing.encode()).hexdigest()


def build_feature_model(spec: BackboneSpec):
    """The Keras model mapping preprocessed float images (size x size x 3) to pooled features."""
    from featcache.backend import keras

    backbone = spec.backbone
    if spec.weights == backbone.pretrained:
        return backbone.build(spec, pretrained=True)
    keras.utils.set_random_seed(spec.seed)
    model = backbone.build(spec, pretrained=False)
    if spec.weights != "none":
        load_weights_file(model, spec.weights, f"{spec.name} (options {dict(spec.options) or 'default'})")
    return model
