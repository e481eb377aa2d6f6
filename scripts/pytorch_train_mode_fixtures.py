"""PyTorch fixtures for training-mode lowering (tests/training_mode.rs).

Run with the project venv:  /work/venv/bin/python scripts/pytorch_train_mode_fixtures.py

Each case builds the PyTorch modules a spec under tests/fixtures/train_mode/ describes, puts them
in training mode (`module.train()`), runs one forward pass in float32 and writes
tests/fixtures/train_mode/<case>.json in the format of the forward fixtures
(scripts/make_forward_fixtures.py, whose weight and input generator this script shares, so no
tensor needs storing): the network's outputs, then one output `buffer_update.<name>` per batch
norm running statistic holding its value after the pass, as nnc's training-mode graph names it.
`num_batches_tracked` is left out: nnc keeps no such buffer (with a float momentum it never
affects the result).
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_forward_fixtures import (  # noqa: E402
    ROOT, Modules, input_values, load_parameters, rounded)

OUT = ROOT / "tests" / "fixtures" / "train_mode"


def write_train_case(name, module, inputs, forward, symbols):
    """`inputs`: (name, shape); `forward(module, *tensors)` returns a dict of outputs."""
    torch.manual_seed(0)
    parameters = load_parameters(module, lambda key: key)
    module.train()
    tensors = [input_values(input_name, shape) for input_name, shape in inputs]
    with torch.no_grad():
        outputs = forward(module, *tensors)
    for key, value in module.state_dict().items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            outputs["buffer_update." + key] = value
    fixture = {
        "spec": f"tests/fixtures/train_mode/{name}.nn",
        "set": {},
        "input_shapes": {},
        "symbols": symbols,
        "inputs": [{"name": n, "shape": s, "int_high": None} for n, s in inputs],
        "parameters": parameters,
        "outputs": [
            {"name": key, "shape": list(value.shape), "data": rounded(value.flatten().tolist())}
            for key, value in outputs.items()
        ],
    }
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


def main():
    write_train_case("batch_norm_layers", Modules(
        bn_image=nn.BatchNorm2d(3), bn_vector=nn.BatchNorm1d(6, affine=False, momentum=0.3),
        bn_sequence=nn.BatchNorm1d(4, eps=1e-3, momentum=0.5), ln_last=nn.LayerNorm(4)),
        [("x", [3, 3, 5, 4]), ("v", [3, 6]), ("s", [3, 4, 7])],
        lambda m, x, v, s: {"bn_image": m.bn_image(x), "bn_vector": m.bn_vector(v),
                            "bn_sequence": m.bn_sequence(s), "ln_last": m.ln_last(x)},
        {"N": 3})

    def conv_block(m, image):
        y = m.bn2(m.conv2(F.relu(m.bn1(m.conv1(image)))))
        short = m.downsample(image)
        pooled = F.max_pool2d(F.relu(y + short), 2)
        return {"logits": m.fc(pooled.flatten(1))}

    write_train_case("conv_block", Modules(
        conv1=nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False), bn1=nn.BatchNorm2d(6),
        conv2=nn.Conv2d(6, 6, 3, padding=1, bias=False), bn2=nn.BatchNorm2d(6),
        downsample=nn.Sequential(nn.Conv2d(3, 6, 1, stride=2, bias=False),
                                 nn.BatchNorm2d(6, momentum=0.2)),
        fc=nn.Linear(24, 5)),
        [("image", [2, 3, 8, 8])], conv_block, {"N": 2})

    write_train_case("shared_batch_norm", Modules(norm=nn.BatchNorm1d(4, momentum=0.25)),
                     [("x", [6, 4])],
                     lambda m, x: {"first": m.norm(x), "second": m.norm(x * 2 + 1)}, {"N": 6})


if __name__ == "__main__":
    main()
