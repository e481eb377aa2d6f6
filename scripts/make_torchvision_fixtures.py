#!/usr/bin/env python3
"""Writes tests/fixtures/torchvision/<name>.json for the reference specs in specs/.

Each fixture records what tests/torchvision_specs.rs compares nnc against:

    {"params": <sum of p.numel() for p in model.parameters()>,
     "state_dict": [[name, shape, is_parameter], ...]}

for torchvision's models at their defaults (1000 classes, untrained: weights=None).

`num_batches_tracked` entries are left out: they are int64 step counters that BatchNorm keeps
for its momentum=None mode, and nnc does not model them (its batch-norm state is
running_mean/running_var only).

Run with the project venv: /work/venv/bin/python scripts/make_torchvision_fixtures.py
"""

import json
import pathlib

import torch
import torchvision

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "vgg16": lambda: torchvision.models.vgg16(weights=None),
    "alexnet": lambda: torchvision.models.alexnet(weights=None),
    "googlenet": lambda: torchvision.models.googlenet(
        weights=None, aux_logits=False, init_weights=False
    ),
    "densenet121": lambda: torchvision.models.densenet121(weights=None),
}

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torchvision"


def fixture(model: torch.nn.Module) -> dict:
    parameter_names = {name for name, _ in model.named_parameters()}
    entries = [
        [name, list(tensor.shape), name in parameter_names]
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    ]
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "state_dict": entries,
    }


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    for name, build in MODELS.items():
        data = fixture(build())
        path = OUT_DIR / f"{name}.json"
        with path.open("w") as out:
            out.write("{\n")
            out.write(f'  "params": {data["params"]},\n')
            out.write('  "state_dict": [\n')
            lines = [json.dumps(entry) for entry in data["state_dict"]]
            out.write(",\n".join(f"    {line}" for line in lines))
            out.write("\n  ]\n}\n")
        print(f"{name}: {data['params']:,} params, {len(data['state_dict'])} entries -> {path}")


if __name__ == "__main__":
    main()
