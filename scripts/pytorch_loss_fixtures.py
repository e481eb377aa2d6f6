"""PyTorch fixtures for the loss functions (tests/losses_vs_pytorch.rs).

Run with the project venv:  /work/venv/bin/python scripts/pytorch_loss_fixtures.py

Each case is a tiny spec whose inputs are the loss's operands, the operands themselves (small,
stored in the file) and the value PyTorch's functional loss gives for them, computed in float64
so that the Rust test can compare nnc's f64 interpreter within 1e-6 relative. The cases cover
every loss and option: reductions, class weights, label smoothing (alone and with weights),
per-pixel and class-last cross-entropy, probability targets, positive weights, logits large
enough to overflow a naive formula, probabilities of exactly 0 and 1 (PyTorch clamps the log at
-100), learned and fixed variances with all of PyTorch's variance shapes, and the VAE's loss.

Writes tests/fixtures/losses/<case>.json:
  {"spec": text, "symbols": {"N": n}, "inputs": [{"name", "shape", "int", "data"}],
   "loss": value, "torch": the PyTorch expression}
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "losses"
RNG = np.random.default_rng(20240611)


def floats(*shape, low=-2.0, high=2.0):
    return torch.from_numpy(RNG.uniform(low, high, size=shape))


def class_ids(high, *shape):
    return torch.from_numpy(RNG.integers(0, high, size=shape))


def probabilities(*shape, dim=1):
    return torch.softmax(floats(*shape), dim=dim)


def declaration(name, tensor):
    dims = ", ".join(["N"] + [str(size) for size in tensor.shape[1:]])
    kind = " int" if tensor.dtype == torch.int64 else ""
    return f"input {name}: [{dims}]{kind}"


def write_case(case, inputs, loss_expression, torch_expression, value, output=None):
    """`inputs`: (name, tensor) in declaration order; the first is the spec's output."""
    lines = [declaration(name, tensor) for name, tensor in inputs]
    lines.append(f"output prediction = {output or inputs[0][0]} -> identity")
    lines.append(loss_expression)
    fixture = {
        "spec": "\n".join(lines) + "\n",
        "symbols": {"N": int(inputs[0][1].shape[0])},
        "inputs": [
            {
                "name": name,
                "shape": list(tensor.shape),
                "int": tensor.dtype == torch.int64,
                "data": [float(value) for value in tensor.flatten().tolist()],
            }
            for name, tensor in inputs
        ],
        "loss": float(value),
        "torch": torch_expression,
    }
    # One line per key (and per input) keeps the files short and their diffs readable.
    lines = []
    for key, value in fixture.items():
        if key == "inputs":
            items = ",\n  ".join(json.dumps(item) for item in value)
            lines.append(f'"inputs": [\n  {items}\n ]')
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    (OUT / f"{case}.json").write_text("{\n " + ",\n ".join(lines) + "\n}\n")


def mse_cases():
    x, t = floats(3, 4), floats(3, 4)
    for reduction in ["mean", "sum"]:
        write_case(
            f"mse_{reduction}",
            [("x", x), ("t", t)],
            f'loss mse(x, t, reduction = "{reduction}")',
            f'F.mse_loss(x, t, reduction="{reduction}")',
            F.mse_loss(x, t, reduction=reduction),
        )


def cross_entropy_cases():
    logits, label = floats(6, 5), class_ids(5, 6)
    weight = [0.5, 2.0, 1.0, 3.0, 0.25]
    options = {
        "plain": ({}, ""),
        "weighted": ({"weight": weight}, f", weight = {weight}"),
        "smoothed": ({"label_smoothing": 0.2}, ", label_smoothing = 0.2"),
        "weighted_smoothed": (
            {"weight": weight, "label_smoothing": 0.1},
            f", weight = {weight}, label_smoothing = 0.1",
        ),
    }
    for name, (kwargs, spec_args) in options.items():
        for reduction in ["mean", "sum"]:
            torch_kwargs = dict(kwargs)
            if "weight" in torch_kwargs:
                torch_kwargs["weight"] = torch.tensor(weight, dtype=torch.float64)
            value = F.cross_entropy(logits, label, reduction=reduction, **torch_kwargs)
            write_case(
                f"cross_entropy_{name}_{reduction}",
                [("logits", logits), ("label", label)],
                f'loss cross_entropy(logits, label{spec_args}, reduction = "{reduction}")',
                f'F.cross_entropy(logits, label, reduction="{reduction}", **{kwargs})',
                value,
            )
    # Per pixel, as FCN: [N, C, H, W] logits with [N, H, W] labels.
    logits, label = floats(2, 3, 4, 5) * 3, class_ids(3, 2, 4, 5)
    weight = [1.0, 0.5, 2.0]
    value = F.cross_entropy(
        logits, label, weight=torch.tensor(weight, dtype=torch.float64), label_smoothing=0.05
    )
    write_case(
        "cross_entropy_per_pixel",
        [("scores", logits), ("label", label)],
        f"loss cross_entropy(scores, label, weight = {weight}, label_smoothing = 0.05)",
        "F.cross_entropy(scores, label, weight=weight, label_smoothing=0.05)",
        value,
    )
    # Classes last, as a language model's [N, T, V] logits: `dim = -1`.
    logits, targets = floats(2, 6, 7) * 4, class_ids(7, 2, 6)
    value = F.cross_entropy(logits.transpose(1, 2), targets, label_smoothing=0.1)
    write_case(
        "cross_entropy_classes_last",
        [("logits", logits), ("targets", targets)],
        "loss next_token = cross_entropy(logits, targets, dim = -1, label_smoothing = 0.1)",
        "F.cross_entropy(logits.transpose(1, 2), targets, label_smoothing=0.1)",
        value,
    )
    # Class probabilities as the target, with weights and smoothing; and huge logits, where a
    # softmax without the max subtracted would overflow.
    logits, target = floats(4, 5) * 300, probabilities(4, 5)
    weight = [1.0, 2.0, 0.5, 1.5, 1.0]
    value = F.cross_entropy(
        logits, target, weight=torch.tensor(weight, dtype=torch.float64), label_smoothing=0.3
    )
    write_case(
        "cross_entropy_probabilities",
        [("logits", logits), ("target", target)],
        f"loss cross_entropy(logits, target, weight = {weight}, label_smoothing = 0.3)",
        "F.cross_entropy(logits, target, weight=weight, label_smoothing=0.3)",
        value,
    )


def binary_cross_entropy_cases():
    # Logits up to +-60: exp(60) overflows nothing in f64, but exp(-x) of a naive form in f32
    # would; the stable form must agree with PyTorch everywhere.
    logits = floats(4, 3, low=-60.0, high=60.0)
    target = torch.from_numpy(RNG.uniform(0.0, 1.0, size=(4, 3)))
    write_case(
        "bce_with_logits_mean",
        [("logits", logits), ("target", target)],
        "loss bce_with_logits(logits, target)",
        "F.binary_cross_entropy_with_logits(logits, target)",
        F.binary_cross_entropy_with_logits(logits, target),
    )
    pos_weight = [0.5, 3.0, 1.25]
    write_case(
        "bce_with_logits_pos_weight",
        [("logits", logits), ("target", target)],
        f'loss binary_cross_entropy_with_logits(logits, target, pos_weight = {pos_weight}, reduction = "sum")',
        'F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="sum")',
        F.binary_cross_entropy_with_logits(
            logits,
            target,
            pos_weight=torch.tensor(pos_weight, dtype=torch.float64),
            reduction="sum",
        ),
    )
    write_case(
        "bce_with_logits_one_pos_weight",
        [("logits", logits), ("target", target)],
        "loss bce_with_logits(logits, target, pos_weight = 2.5)",
        "F.binary_cross_entropy_with_logits(logits, target, pos_weight=tensor(2.5))",
        F.binary_cross_entropy_with_logits(
            logits, target, pos_weight=torch.tensor(2.5, dtype=torch.float64)
        ),
    )
    # Probabilities including exactly 0 and 1, where PyTorch clamps the logs at -100.
    p = torch.from_numpy(RNG.uniform(0.0, 1.0, size=(3, 4)))
    p[0, 0], p[1, 1], p[2, 2] = 0.0, 1.0, 0.0
    target = torch.from_numpy(RNG.uniform(0.0, 1.0, size=(3, 4)))
    target[0, 0], target[1, 1] = 1.0, 0.0
    for reduction in ["mean", "sum"]:
        write_case(
            f"binary_cross_entropy_{reduction}",
            [("p", p), ("target", target)],
            f'loss binary_cross_entropy(p, target, reduction = "{reduction}")',
            f'F.binary_cross_entropy(p, target, reduction="{reduction}")',
            F.binary_cross_entropy(p, target, reduction=reduction),
        )


def gaussian_nll_cases():
    mean, target = floats(5, 3), floats(5, 3)
    variance = torch.from_numpy(RNG.uniform(0.05, 2.0, size=(5, 3)))
    # A variance below the default eps (1e-6) is clamped to it; a target near the mean keeps
    # that element's term moderate, so that the other elements still weigh in the comparison.
    tiny = variance.clone()
    tiny[0, 0] = 1e-9
    near = target.clone()
    near[0, 0] = mean[0, 0] + 1e-3
    write_case(
        "gaussian_nll_clamped",
        [("mean", mean), ("target", near), ("var", tiny)],
        "loss gaussian_nll(mean, target, var)",
        "F.gaussian_nll_loss(mean, target, var) with var[0, 0] = 1e-9 < eps",
        F.gaussian_nll_loss(mean, near, tiny),
    )
    cases = {
        "learned": (variance, {}, ""),
        "learned_full_sum": (variance, {"full": True, "reduction": "sum"}, ', full = true, reduction = "sum"'),
        "eps": (variance, {"eps": 0.1}, ", eps = 0.1"),  # clamps the variances below 0.1
        "per_sample": (variance[:, :1].clone(), {}, ""),
        "per_sample_unsqueezed": (variance[:, 0].clone(), {}, ""),
    }
    for name, (var, kwargs, spec_args) in cases.items():
        write_case(
            f"gaussian_nll_{name}",
            [("mean", mean), ("target", target), ("var", var)],
            f"loss gaussian_nll(mean, target, var{spec_args})",
            f"F.gaussian_nll_loss(mean, target, var, **{kwargs})",
            F.gaussian_nll_loss(mean, target, var, **kwargs),
        )
    for name, kwargs, spec_args in [
        ("fixed", {}, ""),
        ("fixed_full_sum", {"full": True, "reduction": "sum"}, ', full = true, reduction = "sum"'),
    ]:
        var = torch.full_like(mean, 0.3)
        write_case(
            f"gaussian_nll_{name}",
            [("mean", mean), ("target", target)],
            f"loss gaussian_nll(mean, target, 0.3{spec_args})",
            f"F.gaussian_nll_loss(mean, target, full_like(mean, 0.3), **{kwargs})",
            F.gaussian_nll_loss(mean, target, var, **kwargs),
        )


def vae_case():
    """The loss_function of PyTorch's examples/vae: BCE summed plus the KL divergence."""
    recon = torch.sigmoid(floats(3, 8))
    image = torch.from_numpy(RNG.uniform(0.0, 1.0, size=(3, 8)))
    mu, logvar = floats(3, 2), floats(3, 2)
    bce = F.binary_cross_entropy(recon, image, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    write_case(
        "vae_loss",
        [("recon", recon), ("image", image), ("mu", mu), ("logvar", logvar)],
        'loss total = binary_cross_entropy(recon, image, reduction = "sum")\n'
        "  + -0.5 * sum(1 + logvar - mu * mu - exp(logvar))",
        "F.binary_cross_entropy(recon, image, reduction='sum') - 0.5 * sum(1 + logvar - mu^2 - exp(logvar))",
        bce + kld,
        output="recon",
    )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)
    mse_cases()
    cross_entropy_cases()
    binary_cross_entropy_cases()
    gaussian_nll_cases()
    vae_case()
    print(f"wrote {len(list(OUT.glob('*.json')))} fixtures to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
