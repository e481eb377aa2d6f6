#!/usr/bin/env python3
"""Writes the PyTorch fixtures of tests/weights.rs into tests/fixtures/weights/.

Three small networks, each built in torch.nn exactly as its spec describes, with PyTorch's names:

    mlp       specs/mlp.nn at hidden = 16 (nnc --set hidden=16): fc1, fc2, fc3
    conv_bn   tests/fixtures/weights/conv_bn.nn: conv, bn, up (grouped ConvTranspose2d), fc
    sequence  tests/fixtures/weights/sequence.nn: embedding, encoder
              (nn.TransformerEncoderLayer, batch_first), lstm, gru (bidirectional), fc

(torchvision's resnet18 state_dict would be 45 MB; these keep the fixtures under 1 MB while
covering every kind of parameter nnc initializes: dense, conv, grouped transposed conv, batch
norm, layer norm, embedding, attention, lstm, gru.)

For each network <name>, built after torch.manual_seed(0):
  <name>.safetensors      safetensors.torch.save_file(model.state_dict()), PyTorch's names,
                          num_batches_tracked included (conv_bn runs 3 training-mode batches
                          first, so its running statistics are not the initial 0 and 1)
  <name>_input.npy        a batch of 2 inputs (float32; sequence: int64 token ids)
  <name>_output.npy       model(input) in eval mode (float32), for forward-pass tests
conv_bn also in other dtypes, each tensor converted from the float32 file's:
  conv_bn_f64.safetensors, conv_bn_f16.safetensors, conv_bn_bf16.safetensors

init_reference.json: PyTorch's default initialization of each tensor, measured. Each network is
constructed RESETS times (seeds 0..RESETS-1) and each state_dict tensor's values pooled:
  {"<net>": {"<name>": {"count", "min", "max", "mean", "std"}}}
so the tests compare nnc's initializers with what PyTorch really draws (a constant tensor has
min == max; a U(-b, b) tensor has max |w| just under b; a normal tensor has its std).

init_stream_reference.json: the first values nnc's seeded initialization must draw, computed here
from the algorithm that src/weights/random.rs documents, independently of its Rust code: ChaCha8
(DJB's ChaCha with 8 rounds, a 64-bit block counter in words 12-13 and a 64-bit stream number in
words 14-15, as rand_chacha's ChaCha8Rng) keyed by the seed (little-endian in the first 8 key
bytes, the rest zero), stream = 64-bit FNV-1a of the tensor's nnc name; 64-bit draws take two
32-bit words, low first; u = (draw >> 11) * 2^-53; U(-b, b) is float32((2u - 1) * b); N(0, s) is
Box-Muller float32(sqrt(-2 ln(1 - u1)) * cos(2 pi u2) * s), then the sin value. Values are stored
as float32 bit patterns: {"<net>": {"seed", "tensors": {"<nnc name>": [bits, ...]}}}.

npy files for the reader's tests, with the contents given here:
  values_f64.npy          np.arange(6, dtype=float64).reshape(2, 3) * 0.5 - 1
  values_big_endian.npy   the same as '>f4'
  values_fortran.npy      the same, float32, in Fortran order (np.asfortranarray)
  tokens_int32.npy        np.array([[1, 2, 3], [4, 5, 19]], dtype=int32)
  scalar.npy              np.float32(2.5), a 0-d array

Run with the project venv (safetensors installed with pip):
    /work/venv/bin/python scripts/make_weight_fixtures.py
"""

import json
import math
import pathlib

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "weights"
RESETS = 100


class Mlp(nn.Module):
    """specs/mlp.nn with hidden = 16: 784-16-16-10, ReLU between."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 10)

    def forward(self, image):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(image)))))


class ConvBn(nn.Module):
    """tests/fixtures/weights/conv_bn.nn."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, image):
        x = torch.relu(self.bn(self.conv(image)))
        x = torch.relu(self.up(x))
        return self.fc(x.mean(dim=(2, 3)))


class Sequence(nn.Module):
    """tests/fixtures/weights/sequence.nn."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.lstm = nn.LSTM(8, 6, batch_first=True)
        self.gru = nn.GRU(6, 4, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        x = self.encoder(self.embedding(tokens))
        x, _ = self.lstm(x)
        x, _ = self.gru(x)
        return self.fc(x[:, -1])


NETWORKS = {"mlp": Mlp, "conv_bn": ConvBn, "sequence": Sequence}


def make_input(name, generator):
    if name == "mlp":
        return torch.randn(2, 784, generator=generator)
    if name == "conv_bn":
        return torch.randn(2, 3, 8, 8, generator=generator)
    return torch.randint(0, 20, (2, 5), generator=generator)


def save_network(name, build):
    torch.manual_seed(0)
    model = build()
    generator = torch.Generator().manual_seed(1)
    if name == "conv_bn":
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 3, 8, 8, generator=generator))
    model.eval()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, OUT_DIR / f"{name}.safetensors")
    example = make_input(name, generator)
    with torch.no_grad():
        output = model(example)
    np.save(OUT_DIR / f"{name}_input.npy", example.numpy())
    np.save(OUT_DIR / f"{name}_output.npy", output.numpy().astype(np.float32))
    if name == "conv_bn":
        for suffix, dtype in [("f64", torch.float64), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
            converted = {
                key: value.to(dtype) if value.is_floating_point() else value
                for key, value in state.items()
            }
            save_file(converted, OUT_DIR / f"{name}_{suffix}.safetensors")
    print(f"{name}: {len(state)} state_dict entries, output {tuple(output.shape)}")


def init_reference():
    reference = {}
    for name, build in NETWORKS.items():
        pooled = {}
        for seed in range(RESETS):
            torch.manual_seed(seed)
            for key, value in build().state_dict().items():
                if key.endswith("num_batches_tracked"):
                    continue
                pooled.setdefault(key, []).append(value.detach().double().flatten())
        reference[name] = {}
        for key, values in pooled.items():
            values = torch.cat(values)
            reference[name][key] = {
                "count": values.numel(),
                "min": values.min().item(),
                "max": values.max().item(),
                "mean": values.mean().item(),
                "std": values.std().item() if values.numel() > 1 else 0.0,
            }
    with (OUT_DIR / "init_reference.json").open("w") as out:
        json.dump(reference, out, indent=1, sort_keys=True)
        out.write("\n")


# ---- The documented initialization stream, written independently of src/weights/random.rs ----

MASK32 = 0xFFFFFFFF


def chacha8_block(key_words, counter, stream):
    """One 64-byte ChaCha block with 8 rounds as sixteen 32-bit words."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574] + key_words + [
        counter & MASK32, counter >> 32, stream & MASK32, stream >> 32,
    ]
    x = list(state)

    def quarter_round(a, b, c, d):
        for (p, q, r, shift) in ((a, b, d, 16), (c, d, b, 12), (a, b, d, 8), (c, d, b, 7)):
            x[p] = (x[p] + x[q]) & MASK32
            x[r] ^= x[p]
            x[r] = ((x[r] << shift) | (x[r] >> (32 - shift))) & MASK32

    for _ in range(4):
        quarter_round(0, 4, 8, 12)
        quarter_round(1, 5, 9, 13)
        quarter_round(2, 6, 10, 14)
        quarter_round(3, 7, 11, 15)
        quarter_round(0, 5, 10, 15)
        quarter_round(1, 6, 11, 12)
        quarter_round(2, 7, 8, 13)
        quarter_round(3, 4, 9, 14)
    return [(x[i] + state[i]) & MASK32 for i in range(16)]


def fnv1a_64(text):
    value = 0xCBF29CE484222325
    for byte in text.encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def unit_draws(seed, name):
    """u = (64-bit draw >> 11) * 2^-53, for the tensor `name`."""
    key_bytes = seed.to_bytes(8, "little") + bytes(24)
    key_words = [int.from_bytes(key_bytes[i:i + 4], "little") for i in range(0, 32, 4)]
    stream = fnv1a_64(name)
    counter = 0
    while True:
        words = chacha8_block(key_words, counter, stream)
        counter += 1
        for i in range(0, 16, 2):
            draw = words[i] | (words[i + 1] << 32)
            yield (draw >> 11) * 2.0**-53


def uniform_values(seed, name, bound, count):
    draws = unit_draws(seed, name)
    return [np.float32((2.0 * next(draws) - 1.0) * bound) for _ in range(count)]


def normal_values(seed, name, std, count):
    draws = unit_draws(seed, name)
    values = []
    while len(values) < count:
        u1 = 1.0 - next(draws)
        u2 = next(draws)
        radius = math.sqrt(-2.0 * math.log(u1))
        angle = 2.0 * math.pi * u2
        values += [np.float32(radius * math.cos(angle) * std), np.float32(radius * math.sin(angle) * std)]
    return values[:count]


def stream_reference():
    count = 16
    bits = lambda values: [int(np.float32(value).view(np.uint32)) for value in values]
    reference = {
        "mlp": {
            "seed": 42,
            "tensors": {
                # nn.Linear(784, 16): kaiming_uniform(a=sqrt(5)) bound 1/sqrt(784), bias too.
                "fc1.weight": bits(uniform_values(42, "fc1.weight", 1.0 / math.sqrt(784), count)),
                "fc1.bias": bits(uniform_values(42, "fc1.bias", 1.0 / math.sqrt(784), count)),
            },
        },
        "sequence": {
            "seed": 7,
            "tensors": {
                "embedding.weight": bits(normal_values(7, "embedding.weight", 1.0, count)),
                # xavier_uniform on [24, 8]: sqrt(6 / (8 + 24)).
                "encoder.self_attn.in_proj.weight": bits(
                    uniform_values(7, "encoder.self_attn.in_proj.weight", math.sqrt(6.0 / 32.0), count)
                ),
                # nn.LSTM(8, 6): U(-1/sqrt(6), 1/sqrt(6)).
                "lstm.weight_hh_l0": bits(uniform_values(7, "lstm.weight_hh_l0", 1.0 / math.sqrt(6), count)),
            },
        },
    }
    with (OUT_DIR / "init_stream_reference.json").open("w") as out:
        json.dump(reference, out, indent=1, sort_keys=True)
        out.write("\n")


def reader_fixtures():
    values = np.arange(6, dtype=np.float64).reshape(2, 3) * 0.5 - 1
    np.save(OUT_DIR / "values_f64.npy", values)
    np.save(OUT_DIR / "values_big_endian.npy", values.astype(">f4"))
    fortran = np.asfortranarray(values.astype(np.float32))
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    np.save(OUT_DIR / "values_fortran.npy", fortran)
    np.save(OUT_DIR / "tokens_int32.npy", np.array([[1, 2, 3], [4, 5, 19]], dtype=np.int32))
    np.save(OUT_DIR / "scalar.npy", np.float32(2.5))


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    for name, build in NETWORKS.items():
        save_network(name, build)
    init_reference()
    stream_reference()
    reader_fixtures()
    total = sum(path.stat().st_size for path in OUT_DIR.iterdir())
    print(f"{OUT_DIR}: {total:,} bytes")


if __name__ == "__main__":
    main()
