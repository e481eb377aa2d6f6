"""Output shapes of convolution, transposed convolution and pooling layers, computed by PyTorch
for random configurations. tests/shape_rules_vs_pytorch.rs compares nnc's shape rules with them.

Run from the repository root with torch installed (pip install torch):
    python scripts/make_shape_fixtures.py
It writes tests/fixtures/pytorch_window_shapes.json (small; committed so tests need no Python).
"""

import json
import random

import torch
import torch.nn.functional as F

random.seed(20261128)


def pair():
    return [random.randint(1, 7), random.randint(1, 7)]


def record(kind, config, run):
    try:
        with torch.no_grad():
            shape = list(run().shape)
        return {"kind": kind, **config, "torch_shape": shape}
    except RuntimeError:
        return {"kind": kind, **config, "torch_shape": None}


cases = []
for _ in range(300):
    groups = random.choice([1, 1, 2, 4])
    channels = groups * random.randint(1, 3)
    out_channels = groups * random.randint(1, 3)
    height, width = random.randint(1, 40), random.randint(1, 40)
    kernel, stride, pad, dilation = pair(), [random.randint(1, 4), random.randint(1, 4)], [random.randint(0, 3), random.randint(0, 3)], [random.randint(1, 3), random.randint(1, 3)]
    config = dict(channels=channels, height=height, width=width, out_channels=out_channels, kernel=kernel, stride=stride, pad=pad, dilation=dilation, groups=groups)
    x = torch.empty(1, channels, height, width)
    weight = torch.empty(out_channels, channels // groups, *kernel)
    cases.append(record("conv2d", config, lambda: F.conv2d(x, weight, None, stride, pad, dilation, groups)))

for _ in range(200):
    groups = random.choice([1, 1, 2])
    channels = groups * random.randint(1, 3)
    out_channels = groups * random.randint(1, 3)
    height, width = random.randint(1, 20), random.randint(1, 20)
    kernel, stride = pair(), [random.randint(1, 4), random.randint(1, 4)]
    pad = [random.randint(0, 3), random.randint(0, 3)]
    dilation = [random.randint(1, 2), random.randint(1, 2)]
    output_pad = [random.randint(0, max(stride[0], dilation[0]) - 1), random.randint(0, max(stride[1], dilation[1]) - 1)]
    config = dict(channels=channels, height=height, width=width, out_channels=out_channels, kernel=kernel, stride=stride, pad=pad, dilation=dilation, groups=groups, output_pad=output_pad)
    x = torch.empty(1, channels, height, width)
    weight = torch.empty(channels, out_channels // groups, *kernel)
    cases.append(record("conv_transpose2d", config, lambda: F.conv_transpose2d(x, weight, None, stride, pad, output_pad, groups, dilation)))

for kind in ["max_pool2d", "avg_pool2d"]:
    for _ in range(250):
        channels, height, width = random.randint(1, 3), random.randint(1, 40), random.randint(1, 40)
        kernel, stride = pair(), [random.randint(1, 4), random.randint(1, 4)]
        pad = [random.randint(0, kernel[0] // 2), random.randint(0, kernel[1] // 2)]
        dilation = [random.randint(1, 2), random.randint(1, 2)] if kind == "max_pool2d" else [1, 1]
        ceil = random.random() < 0.4
        config = dict(channels=channels, height=height, width=width, kernel=kernel, stride=stride, pad=pad, dilation=dilation, ceil=ceil)
        x = torch.empty(1, channels, height, width)
        if kind == "max_pool2d":
            cases.append(record(kind, config, lambda: F.max_pool2d(x, kernel, stride, pad, dilation, ceil)))
        else:
            cases.append(record(kind, config, lambda: F.avg_pool2d(x, kernel, stride, pad, ceil)))

with open("tests/fixtures/pytorch_window_shapes.json", "w") as out:
    json.dump({"torch_version": torch.__version__, "cases": cases}, out, separators=(",", ":"))
print(len(cases), "cases")
