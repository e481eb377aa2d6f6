#!/usr/bin/env python3
"""PyTorch reference parameter counts for the course specs in specs/.

Builds, in torch.nn, exactly the architecture each spec describes (same layers, sizes and
order; the spec's header comment names the reference module layout) and prints one line per
network:

    <spec name> <sum of p.numel() for p in model.parameters()>

followed by the prelude checks (nn.MultiheadAttention, nn.TransformerEncoderLayer,
nn.TransformerDecoderLayer at d_model 512, 8 heads, feed-forward 2048), and then, for every
network whose spec uses PyTorch's state_dict names (up to the renames that
tests/course_specs.rs documents), one line per state_dict entry:

    state <spec name> <key> <shape as AxBxC> <param|buffer>

(`num_batches_tracked` counters are left out: nnc does not model them). Lines starting with `#`
are comments. tests/course_specs.rs reads the output from
tests/fixtures/pytorch_reference_counts.txt:

    /work/venv/bin/python scripts/pytorch_reference_counts.py \
        > tests/fixtures/pytorch_reference_counts.txt

Every model also runs one forward pass on a batch of 2, and its output shape is checked against
the shape the spec declares, so that the module really is the spec's architecture.
"""

import torch
from torch import nn
import torch.nn.functional as F

BATCH = 2


class MLP(nn.Module):
    """specs/mlp.nn: 784-256-256-10."""

    def __init__(self, hidden=256, classes=10):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, image):
        x = torch.relu(self.fc1(image))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """specs/lenet5.nn: classic LeNet-5 (tanh, average pooling) on 1x28x28 with pad 2."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, image):
        x = nn.functional.avg_pool2d(torch.tanh(self.conv1(image)), 2)
        x = nn.functional.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.tanh(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        return self.fc3(x)


def fcn_stage(in_channels, channels):
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class FCN8s(nn.Module):
    """specs/fcn.nn: a small VGG-like encoder with the FCN-8s decoder, 21 classes."""

    def __init__(self, classes=21):
        super().__init__()
        self.stage1 = fcn_stage(3, 32)
        self.stage2 = fcn_stage(32, 64)
        self.stage3 = fcn_stage(64, 128)
        self.stage4 = fcn_stage(128, 256)
        self.stage5 = fcn_stage(256, 256)
        self.fc6 = nn.Conv2d(256, 512, 3, padding=1)
        self.fc7 = nn.Conv2d(512, 512, 1)
        self.score_fr = nn.Conv2d(512, classes, 1)
        self.upscore2 = nn.ConvTranspose2d(classes, classes, 4, stride=2, padding=1, bias=False)
        self.score_pool4 = nn.Conv2d(256, classes, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(
            classes, classes, 4, stride=2, padding=1, bias=False
        )
        self.score_pool3 = nn.Conv2d(128, classes, 1)
        self.upscore8 = nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, bias=False)
        self.drop = nn.Dropout(0.5)

    def forward(self, image):
        pool3 = self.stage3(self.stage2(self.stage1(image)))
        pool4 = self.stage4(pool3)
        pool5 = self.stage5(pool4)
        x = self.drop(torch.relu(self.fc6(pool5)))
        x = self.drop(torch.relu(self.fc7(x)))
        score = self.score_fr(x)
        fuse_pool4 = self.upscore2(score) + self.score_pool4(pool4)
        fuse_pool3 = self.upscore_pool4(fuse_pool4) + self.score_pool3(pool3)
        return self.upscore8(fuse_pool3)


class YOLOv1(nn.Module):
    """specs/yolov1.nn: the paper's 24 conv + 2 dense layers, no batch norm, 448x448."""

    def __init__(self, grid=7, boxes=2, classes=20):
        super().__init__()
        self.grid, self.depth = grid, boxes * 5 + classes
        layers = []
        channels = 3

        def conv(out, kernel, stride=1):
            nonlocal channels
            layers.append(nn.Conv2d(channels, out, kernel, stride, padding=kernel // 2))
            layers.append(nn.LeakyReLU(0.1))
            channels = out

        def pool():
            layers.append(nn.MaxPool2d(2))

        conv(64, 7, stride=2)
        pool()
        conv(192, 3)
        pool()
        conv(128, 1)
        conv(256, 3)
        conv(256, 1)
        conv(512, 3)
        pool()
        for _ in range(4):
            conv(256, 1)
            conv(512, 3)
        conv(512, 1)
        conv(1024, 3)
        pool()
        for _ in range(2):
            conv(512, 1)
            conv(1024, 3)
        conv(1024, 3)
        conv(1024, 3, stride=2)
        conv(1024, 3)
        conv(1024, 3)
        assert sum(isinstance(layer, nn.Conv2d) for layer in layers) == 24
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(1024 * grid * grid, 4096),
            nn.LeakyReLU(0.1),
            nn.Dropout(0.5),
            nn.Linear(4096, grid * grid * self.depth),
        )

    def forward(self, image):
        x = self.classifier(self.features(image))
        return x.reshape(-1, self.grid, self.grid, self.depth)


class LSTMClassifier(nn.Module):
    """specs/lstm_classifier.nn: embedding -> 2-layer LSTM -> last step -> dense."""

    def __init__(self, vocab=10000, embed=128, hidden=256, classes=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens))
        return self.fc(output[:, -1])


class GRUClassifier(nn.Module):
    """specs/gru_classifier.nn: embedding -> 2-layer bidirectional GRU -> mean -> dense."""

    def __init__(self, vocab=10000, embed=128, hidden=256, classes=4):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, tokens):
        output, _ = self.gru(self.embedding(tokens))
        return self.fc(output.mean(dim=1))


class CharRNN(nn.Module):
    """specs/char_rnn.nn: embedding(65, 64) -> 2-layer LSTM(512) -> dropout -> dense(65)."""

    def __init__(self, vocab=65, embed=64, hidden=512):
        super().__init__()
        self.encoder = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, num_layers=2, batch_first=True)
        self.dropout = nn.Dropout(0.2)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, chars):
        output, _ = self.rnn(self.encoder(chars))
        return self.decoder(self.dropout(output))


class TransformerClassifier(nn.Module):
    """specs/transformer.nn: token + learned positional embedding, 6 encoder layers, mean."""

    def __init__(self, vocab=10000, max_len=512, d_model=512, heads=8, ff=2048, layers=6,
                 classes=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.pos_embedding = nn.Embedding(max_len, d_model)
        self.dropout = nn.Dropout(0.1)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(d_model, classes)

    def forward(self, tokens, positions):
        x = self.dropout(self.embedding(tokens) + self.pos_embedding(positions))
        return self.classifier(self.encoder(x).mean(dim=1))


class DCGANGenerator(nn.Module):
    """specs/dcgan_generator.nn: the PyTorch DCGAN tutorial's Generator."""

    def __init__(self, nz=100, ngf=64, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.main(z)


class VAE(nn.Module):
    """specs/vae.nn: the PyTorch examples' MNIST VAE."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, image):
        h = torch.relu(self.fc1(image.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return torch.sigmoid(self.fc4(torch.relu(self.fc3(z)))), mu, logvar


class CustomCellClassifier(nn.Module):
    """specs/custom_cell.nn: the hand-written LSTM cell has nn.LSTM(128, 256)'s parameters."""

    def __init__(self, vocab=10000, embed=128, hidden=256, classes=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens))
        return self.fc(output[:, -1])


class Siamese(nn.Module):
    """specs/siamese.nn: one encoder shared by both inputs, a dense head on |a - b|."""

    def __init__(self, embed=128):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 32, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 256),
            nn.ReLU(),
            nn.Linear(256, embed),
        )
        self.head = nn.Linear(embed, 1)

    def forward(self, left, right):
        a, b = self.encoder(left), self.encoder(right)
        return torch.sigmoid(self.head(torch.abs(a - b)))


class GaussianRegression(nn.Module):
    """specs/gaussian_regression.nn: an MLP with a mean head and a softplus variance head."""

    def __init__(self, features=8, hidden=64, targets=1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mean_head = nn.Linear(hidden, targets)
        self.variance_head = nn.Linear(hidden, targets)

    def forward(self, x):
        h = self.body(x)
        return self.mean_head(h), F.softplus(self.variance_head(h))


def tokens(vocab, length):
    return torch.randint(0, vocab, (BATCH, length))


# name, model, example inputs, expected output shape(s) (as the spec declares them, batch first),
# whether the spec's names are PyTorch's state_dict names.
NETWORKS = [
    ("mlp", MLP(), (torch.randn(BATCH, 784),), [(BATCH, 10)], True),
    ("lenet5", LeNet5(), (torch.randn(BATCH, 1, 28, 28),), [(BATCH, 10)], True),
    ("fcn", FCN8s(), (torch.randn(BATCH, 3, 224, 224),), [(BATCH, 21, 224, 224)], True),
    ("yolov1", YOLOv1(), (torch.randn(BATCH, 3, 448, 448),), [(BATCH, 7, 7, 30)], True),
    ("lstm_classifier", LSTMClassifier(), (tokens(10000, 32),), [(BATCH, 2)], True),
    ("gru_classifier", GRUClassifier(), (tokens(10000, 64),), [(BATCH, 4)], True),
    ("char_rnn", CharRNN(), (tokens(65, 100),), [(BATCH, 100, 65)], True),
    (
        "transformer",
        TransformerClassifier(),
        (tokens(10000, 128), torch.arange(128).expand(BATCH, 128)),
        [(BATCH, 2)],
        True,
    ),
    ("dcgan_generator", DCGANGenerator(), (torch.randn(BATCH, 100, 1, 1),), [(BATCH, 3, 64, 64)],
     True),
    ("vae", VAE(), (torch.randn(BATCH, 784),), [(BATCH, 784), (BATCH, 20), (BATCH, 20)], True),
    # The cell's dense layers are lstm.ih and lstm.hh; tests/course_specs.rs maps their
    # weight/bias to nn.LSTM's weight_ih_l0, bias_ih_l0, weight_hh_l0, bias_hh_l0.
    ("custom_cell", CustomCellClassifier(), (tokens(10000, 32),), [(BATCH, 2)], True),
    (
        "siamese",
        Siamese(),
        (torch.randn(BATCH, 1, 28, 28), torch.randn(BATCH, 1, 28, 28)),
        [(BATCH, 1)],
        True,
    ),
    ("gaussian_regression", GaussianRegression(), (torch.randn(BATCH, 8),), [(BATCH, 1), (BATCH, 1)],
     True),
]

# The prelude's blocks against torch.nn at d_model 512, 8 heads, feed-forward 2048.
PRELUDE_CHECKS = [
    ("multi_head_attention", nn.MultiheadAttention(512, 8, batch_first=True)),
    ("transformer_encoder_layer", nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True)),
    ("transformer_decoder_layer", nn.TransformerDecoderLayer(512, 8, 2048, batch_first=True)),
]


def count(model):
    return sum(p.numel() for p in model.parameters())


def state_lines(name, model):
    parameter_names = {key for key, _ in model.named_parameters()}
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        shape = "x".join(str(size) for size in tensor.shape) or "scalar"
        kind = "param" if key in parameter_names else "buffer"
        yield f"state {name} {key} {shape} {kind}"


def main():
    torch.manual_seed(0)
    print("# PyTorch reference parameter counts for the course specs (specs/<name>.nn) and the")
    print("# prelude blocks. Written by scripts/pytorch_reference_counts.py with torch "
          f"{torch.__version__.split('+')[0]};")
    print("# do not edit by hand. Format: `<name> <parameter count>`, then")
    print("# `state <name> <state_dict key> <shape> <param|buffer>` for specs that use PyTorch's "
          "names.")
    states = []
    for name, model, inputs, expected, same_names in NETWORKS:
        model.eval()
        with torch.no_grad():
            outputs = model(*inputs)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        shapes = [tuple(output.shape) for output in outputs]
        assert shapes == expected, f"{name}: output shapes {shapes}, expected {expected}"
        print(f"{name} {count(model)}")
        if same_names:
            states.extend(state_lines(name, model))
    x = torch.randn(BATCH, 10, 512)
    memory = torch.randn(BATCH, 12, 512)
    for name, module in PRELUDE_CHECKS:
        module.eval()
        with torch.no_grad():
            if name == "multi_head_attention":
                module(x, x, x)
            elif name == "transformer_encoder_layer":
                module(x)
            else:
                module(x, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(10))
        print(f"{name} {count(module)}")
        states.extend(state_lines(name, module))
    for line in states:
        print(line)


if __name__ == "__main__":
    main()
