"""KerasHub presets as backbones: ``hub:PRESET`` (the ``featcache[hub]`` extra, Python >= 3.11).

PRESET is a KerasHub preset name (``dinov2_base``, pinned to its versioned Kaggle handle), a
``kaggle://`` or ``hf://`` handle, or a preset folder (``save_to_preset``'s), which works offline.
The backbone is named ``hub.`` plus the preset's own name (a folder's name, a handle's variation: a
name Keras, TensorFlow and file systems take);
its spec records the handle or folder, and the cache key hashes the preset's files.

- Preprocessing is the preset's image converter without its resize (the pipeline resizes): its
  per-channel ``scale`` and ``offset``, a per-pixel affine map, so export keeps working.
- The pooled feature is the family's image embedding (first of its ``poolings`` by default):
  DINOv2 ``cls+mean`` (CLS token and the mean of the patch tokens), ViT ``cls``, CLIP ``projected``
  (``pooled``: before the projection), SigLIP ``pooled``.
- Input size: the preset's, or any multiple of the patch size for DINOv2, which interpolates its
  position embeddings.
- Fine-tuning blocks are the transformer blocks.
"""

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.backbones import HUB_NAME, Backbone
from featcache.errors import FeatcacheError
from featcache.params import Interval, Options, Rule

FILES = ("config.json", "image_converter.json")  # with the weights: what decides the features


@dataclass(frozen=True)
class Family:
    """What featcache knows of one KerasHub backbone class."""

    poolings: tuple  # the first is the default
    block: str  # the name of the n-th transformer block (a regex)
    first_block: int  # the number of the bottom block
    tower: str = ""  # the config key of the vision encoder inside a two-tower model
    interpolates: bool = False  # takes any input size (a multiple of its patch size)


FAMILIES = {
    "DINOV2Backbone": Family(("cls+mean", "cls", "mean"), "layers_{}$", 0, interpolates=True),
    "ViTBackbone": Family(("cls", "mean", "cls+mean"), "transformer_block_{}$", 1),
    "CLIPBackbone": Family(("projected", "pooled"), "(.*_)?encoder_block_{}$", 0, tower="vision_encoder"),
    "SigLIPBackbone": Family(("pooled",), "(.*_)?encoder_block_{}$", 0, tower="vision_encoder"),
}


def keras_hub():
    """The keras_hub module, or one line saying what to install."""
    if sys.version_info < (3, 11):
        raise FeatcacheError(f"hub: backbones need keras-hub, which needs Python >= 3.11 (this is "
                             f"{sys.version_info.major}.{sys.version_info.minor})")
    try:
        from featcache.backend import native_stderr_silenced

        with native_stderr_silenced():
            import keras_hub
    except ImportError:
        raise FeatcacheError("hub: backbones need keras-hub: pip install 'featcache[hub]'") from None
    return keras_hub


def _preset_utils():
    keras_hub()
    from keras_hub.src.utils import preset_utils

    return preset_utils


def locate(preset: str) -> str:
    """A preset folder's absolute path, a handle as given, or a built-in preset name's versioned handle."""
    folder = Path(preset).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    if "://" in preset:
        return preset
    builtin = _preset_utils().BUILTIN_PRESETS.get(preset)
    if builtin is None:
        raise FeatcacheError(f"no KerasHub preset {preset!r}: give a preset name (e.g. dinov2_base), a kaggle:// or "
                             "hf:// handle, or a preset folder")
    return builtin["kaggle_handle"]


def preset_name(location: str) -> str:
    """The preset's own name: a folder's name, a handle's last part that is not a version number."""
    name = next(part for part in reversed(location.rstrip("/").split("/")) if not part.isdigit())
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)  # a Keras scope name and a file name


def preset_file(location: str, name: str) -> Path:
    """A file of the preset, downloaded (and then cached by KerasHub) for a handle."""
    try:
        return Path(_preset_utils().get_file(location, name))
    except FeatcacheError:
        raise
    except Exception as exc:
        raise FeatcacheError(f"cannot read {name} of KerasHub preset {location}: {str(exc).splitlines()[0]}") from None


def _config(location: str, name: str = "config.json") -> dict:
    return json.loads(preset_file(location, name).read_text())


def backbone(preset: str) -> "HubBackbone":
    """The backbone of a preset, described from its config files (no model is built)."""
    location = locate(preset)
    config = _config(location)
    family = FAMILIES.get(config.get("class_name"))
    if family is None:
        raise FeatcacheError(f"hub:{preset} is a {config.get('class_name', 'model without a KerasHub config')}: "
                             f"featcache takes the image embeddings of {', '.join(FAMILIES)} presets")
    vision = config["config"][family.tower]["config"] if family.tower else config["config"]
    poolings = family.poolings if vision.get("use_class_token", True) else ("mean",)
    blocks = tuple(family.block.format(n) for n in range(family.first_block, family.first_block + vision["num_layers"]))
    size, patch = vision["image_shape"][0], vision["patch_size"]
    return HubBackbone(HUB_NAME + preset_name(location), config["class_name"], size,
                       patch if family.interpolates else size, blocks, patch, 1 + vision.get("num_register_tokens", 0),
                       poolings, location)


@dataclass(frozen=True)
class HubBackbone(Backbone):
    """A KerasHub preset's image tower as a backbone (see the module docstring)."""

    name: str
    family: str  # the KerasHub backbone class
    default_size: int
    min_size: int
    blocks: tuple
    patch_size: int
    first_patch: int  # the index of the first patch token (after the CLS and register tokens)
    poolings: tuple
    preset: str  # the folder or handle
    pretrained = "preset"
    options = {}

    @property
    def module(self) -> str:
        return f"keras_hub.{_config(self.preset, 'image_converter.json')['class_name']}"

    @property
    def preprocessing(self) -> str:
        return f"{self.module} of {self.preset}: scale and offset (resized by the pipeline)"

    def size_rules(self):
        if not FAMILIES[self.family].interpolates:
            return [Options(self.default_size)]
        at_least = Interval(int, self.min_size, None)
        return [Rule(lambda size: at_least.accepts(size) and size % self.patch_size == 0,
                     f"{at_least} and a multiple of the patch size {self.patch_size}")]

    def preprocess_input(self):
        converter = _config(self.preset, "image_converter.json")["config"]
        scale = np.asarray(1.0 if converter.get("scale") is None else converter["scale"], np.float32)
        offset = np.asarray(0.0 if converter.get("offset") is None else converter["offset"], np.float32)
        return lambda batch: batch * scale + offset

    def pretrained_files(self, spec):
        utils = _preset_utils()
        if utils.check_file_exists(self.preset, utils.SHARDED_MODEL_WEIGHTS_CONFIG_FILE):
            shards = json.loads(preset_file(self.preset, utils.SHARDED_MODEL_WEIGHTS_CONFIG_FILE).read_text())
            names = {name for v in shards["weight_map"].values() for name in (v if isinstance(v, list) else [v])}
            weights = [utils.SHARDED_MODEL_WEIGHTS_CONFIG_FILE, *sorted(names)]
        else:
            weights = [utils.MODEL_WEIGHTS_FILE]
        return [preset_file(self.preset, name) for name in (*FILES, *weights)]

    def source(self):
        return self.preset

    def build(self, spec, pretrained):
        from featcache.backend import keras, keras_output_hidden

        family = FAMILIES[self.family]
        shape = (spec.input_size, spec.input_size, 3)
        resized = {"image_shape": shape} if family.interpolates else {}
        with keras_output_hidden():
            model = keras_hub().models.Backbone.from_preset(self.preset, load_weights=pretrained, **resized)
        images = keras.Input(shape, name="images")
        tower = getattr(model, family.tower) if family.tower else model
        out = tower({"images": images} if isinstance(tower.input, dict) else images)
        pooled = self._poolings(model, out)[spec.pooling]()
        return keras.Model(images, pooled, name=spec.name)

    def _poolings(self, model, out) -> dict:
        """The family's image embeddings of the tower's output, each built when called."""
        if self.family == "CLIPBackbone":
            pooled = model.vision_pooler(out)
            return {"pooled": lambda: pooled, "projected": lambda: model.vision_projection(pooled)}
        if self.family == "SigLIPBackbone":
            return {"pooled": lambda: out}
        return token_poolings(out, self.first_patch)


def token_poolings(tokens, first_patch: int) -> dict:
    """The poolings of a token sequence (CLS first), each built when called, from built-in Keras layers only
    (an exported model loads without custom code)."""
    from featcache.backend import keras

    layers = keras.layers
    count = tokens.shape[1]
    cls = lambda: layers.Flatten(name="cls")(layers.Cropping1D((0, count - 1))(tokens))  # noqa: E731
    mean = lambda: layers.GlobalAveragePooling1D(name="mean")(layers.Cropping1D((first_patch, 0))(tokens))  # noqa: E731
    return {"cls": cls, "mean": mean, "cls+mean": lambda: layers.Concatenate(name="cls_mean")([cls(), mean()])}
