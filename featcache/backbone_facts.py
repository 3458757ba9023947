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
