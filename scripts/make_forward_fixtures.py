"""PyTorch forward fixtures for the reference interpreter (tests/interpreter_vs_pytorch.rs and
tests/lowering.rs).

Run with the project venv:  /work/venv/bin/python scripts/make_forward_fixtures.py

Each case builds, in eval mode, the PyTorch module that a spec describes (resnet18 from
torchvision, the LSTM, GRU, custom-cell, char-rnn and transformer specs at reduced sizes, and one
small spec per group of layers under tests/fixtures/forward/layers/), runs its forward pass in
float32, and writes tests/fixtures/forward/<group>/<case>.json with the spec, the settings, the
parameter names and shapes in nnc's naming, the input shapes and the outputs.

Weights and inputs are not stored: resnet18 alone would be 45 MB. Both sides compute them from
the tensor's name with the same counter-based generator (SplitMix64 over the FNV-1a hash of the
name, below; `fixture_values` in tests/forward_common/mod.rs), rounded to float32, so the fixture
files stay a few kilobytes and the Rust test feeds the interpreter bit-identical numbers.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "forward"
MASK64 = (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & MASK64
    return value


def uniforms(key: str, count: int) -> np.ndarray:
    """`count` numbers in [0, 1): SplitMix64 of `fnv1a(key) + (k + 1) * golden`, top 53 bits."""
    seed = np.uint64(fnv1a(key.encode()))
    counters = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + counters * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def parameter_values(name: str, shape) -> np.ndarray:
    """Positive variances, centred means, norm scales near 1, others U(-1/sqrt(fan_in), ...)."""
    u = uniforms("param:" + name, math.prod(shape))
    if name.endswith("running_var"):
        values = 0.5 + u
    elif name.endswith("running_mean"):
        values = u - 0.5
    elif len(shape) == 1 and name.endswith("weight"):
        values = 0.5 + u
    else:
        fan_in = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
        values = (2.0 * u - 1.0) / math.sqrt(fan_in)
    return values.astype(np.float32).reshape(shape)


def input_values(name: str, shape, int_high=None) -> torch.Tensor:
    u = uniforms("input:" + name, math.prod(shape)).reshape(shape)
    if int_high is not None:
        return torch.from_numpy(np.floor(u * int_high).astype(np.int64))
    return torch.from_numpy((2.0 * u - 1.0).astype(np.float32))


def rename_attention(key: str) -> str:
    return key.replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias")


def load_parameters(module: nn.Module, rename) -> list:
    entries = []
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            name = rename(key)
            shape = list(tensor.shape)
            tensor.copy_(torch.from_numpy(parameter_values(name, shape)))
            entries.append([name, shape])
    return sorted(entries)


def rounded(values) -> list:
    """Nine significant digits: float32 round-trips, and the files stay small."""
    return [float(f"{value:.9g}") for value in values]


def write_case(group, name, spec, module, inputs, forward, symbols, settings=None,
               input_shapes=None, rename=lambda key: key):
    """`inputs`: (name, shape, int_high or None); `forward(module, *tensors)` returns a dict."""
    torch.manual_seed(0)
    module.eval()
    parameters = load_parameters(module, rename)
    tensors = [input_values(input_name, shape, high) for input_name, shape, high in inputs]
    with torch.no_grad():
        outputs = forward(module, *tensors)
    fixture = {
        "spec": spec,
        "set": settings or {},
        "input_shapes": input_shapes or {},
        "symbols": symbols,
        "inputs": [{"name": n, "shape": s, "int_high": h} for n, s, h in inputs],
        "parameters": parameters,
        "outputs": [
            {"name": key, "shape": list(value.shape), "data": rounded(value.flatten().tolist())}
            for key, value in outputs.items()
        ],
    }
    path = OUT / group / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


class Classifier(nn.Module):
    """embedding -> recurrence -> (last step | mean over time | every step) -> dense."""

    def __init__(self, embedding, recurrence, fc, reduce, fc_name="fc", embedding_name="embedding",
                 recurrence_name="lstm"):
        super().__init__()
        self.names = (embedding_name, recurrence_name, fc_name)
        self.add_module(embedding_name, embedding)
        self.add_module(recurrence_name, recurrence)
        self.add_module(fc_name, fc)
        self.reduce = reduce

    def forward(self, tokens):
        embedding, recurrence, fc = (getattr(self, name) for name in self.names)
        return fc(self.reduce(recurrence(embedding(tokens))[0]))


class Modules(nn.Module):
    """Named children whose forward the case writes as a function."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def cell_names(prefix: str):
    """nn.LSTM/nn.RNN layer-0 tensors as a cell written in the language names them."""
    pairs = [("weight_ih_l0", "ih.weight"), ("bias_ih_l0", "ih.bias"),
             ("weight_hh_l0", "hh.weight"), ("bias_hh_l0", "hh.bias")]

    def rename(key):
        for torch_name, nnc_name in pairs:
            key = key.replace(f"{prefix}.{torch_name}", f"{prefix}.{nnc_name}")
        return key

    return rename


def last_step(sequence):
    return sequence[:, -1]


def network_cases():
    write_case("networks", "resnet18", "specs/resnet18.nn", torchvision.models.resnet18(num_classes=10),
               [("image", [2, 3, 32, 32], None)], lambda m, x: {"logits": m(x)}, {"N": 2},
               settings={"classes": 10}, input_shapes={"image": [3, 32, 32]})
    write_case("networks", "lstm_classifier", "specs/lstm_classifier.nn",
               Classifier(nn.Embedding(50, 16), nn.LSTM(16, 24, num_layers=2, batch_first=True),
                          nn.Linear(24, 3), last_step),
               [("tokens", [2, 7], 50)], lambda m, t: {"logits": m(t)}, {"N": 2, "T": 7},
               settings={"vocab": 50, "embed": 16, "hidden": 24, "classes": 3})
    write_case("networks", "gru_classifier", "specs/gru_classifier.nn",
               Classifier(nn.Embedding(50, 16),
                          nn.GRU(16, 12, num_layers=2, batch_first=True, bidirectional=True),
                          nn.Linear(24, 4), lambda y: y.mean(dim=1), recurrence_name="gru"),
               [("tokens", [2, 6], 50)], lambda m, t: {"logits": m(t)}, {"N": 2, "T": 6},
               settings={"vocab": 50, "embed": 16, "hidden": 12, "classes": 4})
    write_case("networks", "custom_cell", "specs/custom_cell.nn",
               Classifier(nn.Embedding(50, 16), nn.LSTM(16, 24, batch_first=True), nn.Linear(24, 2),
                          last_step),
               [("tokens", [2, 7], 50)], lambda m, t: {"logits": m(t)}, {"N": 2, "T": 7},
               settings={"vocab": 50, "embed": 16, "hidden": 24, "classes": 2},
               rename=cell_names("lstm"))
    write_case("networks", "char_rnn", "specs/char_rnn.nn",
               Classifier(nn.Embedding(20, 8), nn.LSTM(8, 16, num_layers=2, batch_first=True),
                          nn.Linear(16, 20), lambda y: y, embedding_name="encoder",
                          recurrence_name="rnn", fc_name="decoder"),
               [("chars", [2, 5], 20)], lambda m, t: {"logits": m(t)}, {"N": 2, "T": 5},
               settings={"vocab": 20, "embed": 8, "hidden": 16})
    sizes = {"vocab": 50, "max_len": 16, "d_model": 32, "heads": 4, "ff": 64, "layers": 2, "classes": 3}
    model = Modules(
        embedding=nn.Embedding(50, 32), pos_embedding=nn.Embedding(16, 32), dropout=nn.Dropout(0.1),
        encoder=nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, 0.1, batch_first=True), 2,
                                      enable_nested_tensor=False),
        classifier=nn.Linear(32, 3))

    def transformer(m, tokens, positions):
        embedded = m.dropout(m.embedding(tokens) + m.pos_embedding(positions))
        return {"logits": m.classifier(m.encoder(embedded).mean(dim=1))}

    write_case("networks", "transformer", "specs/transformer.nn", model,
               [("tokens", [2, 9], 50), ("positions", [2, 9], 16)], transformer, {"N": 2, "T": 9},
               settings=sizes, rename=rename_attention)


def layer_case(name, module, inputs, forward, symbols, rename=lambda key: key):
    write_case("layers", name, f"tests/fixtures/forward/layers/{name}.nn", module, inputs, forward,
               symbols, rename=rename)


def layer_cases():
    layer_case("conv", Modules(
        grouped=nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        depthwise=nn.Conv2d(4, 4, (3, 2), padding=(1, 0), groups=4, bias=False),
        same=nn.Conv2d(4, 5, 4, padding="same")),
        [("x", [2, 4, 9, 9], None)],
        lambda m, x: {"grouped": m.grouped(x), "depthwise": m.depthwise(x), "same": m.same(x)}, {"N": 2})
    layer_case("conv_transpose", Modules(
        up=nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        dilated=nn.ConvTranspose2d(4, 3, (2, 3), stride=(1, 2), dilation=2, bias=False)),
        [("x", [2, 4, 5, 6], None)], lambda m, x: {"up": m.up(x), "dilated": m.dilated(x)}, {"N": 2})
    layer_case("pools", Modules(), [("x", [2, 3, 8, 7], None)], lambda m, x: {
        "max_ceil": F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
        "max_dilated": F.max_pool2d(x, 2, 1, 0, dilation=2),
        "avg_ceil": F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
        "avg_inside": F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        "avg_ceil_unpadded": F.avg_pool2d(x, 2, ceil_mode=True),
        "adaptive": F.adaptive_avg_pool2d(x, (3, 3)),
        "adaptive_dividing": F.adaptive_avg_pool2d(x, (4, 7)),
        "global": F.adaptive_avg_pool2d(x, (1, 1))}, {"N": 2})
    layer_case("norms", Modules(
        bn_image=nn.BatchNorm2d(3), bn_vector=nn.BatchNorm1d(6, affine=False), ln_last=nn.LayerNorm(4),
        ln_two=nn.LayerNorm([5, 4], eps=1e-3), ln_plain=nn.LayerNorm(4, elementwise_affine=False)),
        [("x", [2, 3, 5, 4], None), ("v", [2, 6], None)], lambda m, x, v: {
            "bn_image": m.bn_image(x), "bn_vector": m.bn_vector(v), "ln_last": m.ln_last(x),
            "ln_two": m.ln_two(x), "ln_plain": m.ln_plain(x)}, {"N": 2})
    layer_case("activations", Modules(), [("x", [2, 3, 5], None)], lambda m, x: {
        "softmax_out": F.softmax(x, dim=1), "log_softmax_out": F.log_softmax(x, dim=-1),
        "gelu_out": F.gelu(x), "silu_out": F.silu(x), "softplus_out": F.softplus(x * 30),
        "leaky_out": F.leaky_relu(x, 0.2),
        "elementwise": torch.sigmoid(x) + torch.tanh(x) * torch.sqrt(x.abs())
        - torch.log(torch.exp(x) + 1) / 2 - F.relu(-x),
        "maximum": x.amax(dim=(1, 2)), "total": x.sum(dim=-1, keepdim=True), "average": x.mean()},
        {"N": 2})
    layer_case("layout", Modules(embedding=nn.Embedding(11, 5), proj=nn.Linear(6, 5)),
               [("tokens", [2, 7], 11), ("a", [2, 4, 6], None), ("b", [2, 6, 3], None)],
               lambda m, tokens, a, b: {
                   "embedded": m.embedding(tokens), "product": a @ b, "broadcast_product": a @ b[-1],
                   "joined": torch.cat([a.transpose(1, 2), b], dim=2), "permuted": a.permute(2, 0, 1),
                   "sliced": a[..., 1:-1], "flat": a.flatten(1), "reshaped": a.reshape(2, 3, -1),
                   "projected": m.proj(a)}, {"N": 2, "T": 7})

    def recurrent(m, x):
        _, (final, _) = m.lstm(x)
        return {"rnn_out": m.rnn(x)[0], "lstm_final": torch.cat([final[0], final[1]], dim=1),
                "gru_out": m.gru(x)[0]}

    layer_case("recurrent", Modules(
        rnn=nn.RNN(5, 4, num_layers=2, batch_first=True, bidirectional=True),
        lstm=nn.LSTM(5, 3, batch_first=True, bidirectional=True),
        gru=nn.GRU(5, 4, batch_first=True, bias=False)),
        [("x", [2, 6, 5], None)], recurrent, {"N": 2, "T": 6})

    def attention(m, x, memory):
        mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
        return {"causal": m.causal(x, x, x, attn_mask=mask, need_weights=False)[0],
                "cross": m.cross(x, memory, memory, need_weights=False)[0],
                "decoded": m.decoder(x, memory, tgt_mask=mask)}

    layer_case("attention", Modules(
        causal=nn.MultiheadAttention(8, 2, batch_first=True),
        cross=nn.MultiheadAttention(8, 2, batch_first=True),
        decoder=nn.TransformerDecoderLayer(8, 2, 16, 0.1, batch_first=True)),
        [("x", [2, 5, 8], None), ("memory", [2, 4, 8], None)], attention, {"N": 2, "T": 5, "S": 4},
        rename=rename_attention)
    layer_case("elman_cell", Modules(cell=nn.RNN(5, 4, batch_first=True)), [("x", [2, 6, 5], None)],
               lambda m, x: {"states": m.cell(x)[0]}, {"N": 2, "T": 6}, rename=cell_names("cell"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    network_cases()
    layer_cases()
