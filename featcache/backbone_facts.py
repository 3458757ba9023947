"""What each backbone is at its default options and size, measured from built models (random weights).

Listing backbones reads this table and builds nothing. ``python -m featcache.backbone_facts`` builds
every registry entry and rewrites the table below; tests/test_backbones.py checks it.
"""

import json
import re
from pathlib import Path

# backbone -> pooled feature width and parameter count (BatchNorm statistics included)
FACTS = {
    "resnet50": {"width": 2048, "parameters": 23587712},
    "resnet101": {"width": 2048, "parameters": 42658176},
    "vgg16": {"width": 512, "parameters": 14714688},
    "vgg19": {"width": 512, "parameters": 20024384},
    "xception": {"width": 2048, "parameters": 20861480},
    "inceptionv3": {"width": 2048, "parameters": 21802784},
    "mobilenet": {"width": 1024, "parameters": 3228864},
    "mobilenetv2": {"width": 1280, "parameters": 2257984},
    "densenet121": {"width": 1024, "parameters": 7037504},
    "efficientnetb0": {"width": 1280, "parameters": 4049571},
    "resnet152": {"width": 2048, "parameters": 58370944},
    "resnet50v2": {"width": 2048, "parameters": 23564800},
    "resnet101v2": {"width": 2048, "parameters": 42626560},
    "resnet152v2": {"width": 2048, "parameters": 58331648},
    "densenet169": {"width": 1664, "parameters": 12642880},
    "densenet201": {"width": 1920, "parameters": 18321984},
    "efficientnetb1": {"width": 1280, "parameters": 6575239},
    "efficientnetb2": {"width": 1408, "parameters": 7768569},
    "efficientnetb3": {"width": 1536, "parameters": 10783535},
    "efficientnetb4": {"width": 1792, "parameters": 17673823},
    "efficientnetb5": {"width": 2048, "parameters": 28513527},
    "efficientnetb6": {"width": 2304, "parameters": 40960143},
    "efficientnetb7": {"width": 2560, "parameters": 64097687},
    "efficientnetv2b0": {"width": 1280, "parameters": 5919312},
    "efficientnetv2b1": {"width": 1280, "parameters": 6931124},
    "efficientnetv2b2": {"width": 1408, "parameters": 8769374},
    "efficientnetv2b3": {"width": 1536, "parameters": 12930622},
    "efficientnetv2s": {"width": 1280, "parameters": 20331360},
    "efficientnetv2m": {"width": 1280, "parameters": 53150388},
    "efficientnetv2l": {"width": 1280, "parameters": 117746848},
    "convnexttiny": {"width": 768, "parameters": 27820128},
    "convnextsmall": {"width": 768, "parameters": 49454688},
    "convnextbase": {"width": 1024, "parameters": 87566464},
    "convnextlarge": {"width": 1536, "parameters": 196230336},
    "convnextxlarge": {"width": 2048, "parameters": 348147968},
    "mobilenetv3small": {"width": 576, "parameters": 939120},
    "mobilenetv3large": {"width": 960, "parameters": 2996352},
    "nasnetmobile": {"width": 1056, "parameters": 4269716},
    "nasnetlarge": {"width": 4032, "parameters": 84916818},
    "inceptionresnetv2": {"width": 1536, "parameters": 54336736},
}


def measure(name: str) -> dict:
    from featcache.backbones import build_feature_model, make_spec

    model = build_feature_model(make_spec(name, weights="none"))
    return {"width": int(model.output_shape[-1]), "parameters": int(model.count_params())}


def main() -> None:
    from featcache.backbones import BACKBONES
    from featcache.files import write_atomically

    rows = "".join(f"    {json.dumps(name)}: {json.dumps(measure(name))},\n" for name in BACKBONES)
    path = Path(__file__)
    table = re.compile(r"^FACTS = \{\n.*?^\}\n", re.MULTILINE | re.DOTALL)
    write_atomically(path, table.sub(lambda _: "FACTS = {\n" + rows + "}\n", path.read_text(), count=1).encode())


if __name__ == "__main__":
    main()
