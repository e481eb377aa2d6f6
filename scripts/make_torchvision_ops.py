"""The compute cost torchvision publishes for its ImageNet models (weights.meta["_ops"], in
GFLOPs as torchvision counts them: one multiply-add is one op, i.e. GMACs), at 224x224.
tests/torchvision_macs.rs compares nnc's forward MACs with these numbers.

Run from the repository root with torchvision installed (pip install torchvision):
    python scripts/make_torchvision_ops.py
It writes tests/fixtures/torchvision_ops.json.
"""

import json

import torchvision.models as models

WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
    "vgg16": models.VGG16_Weights.IMAGENET1K_V1,
    "alexnet": models.AlexNet_Weights.IMAGENET1K_V1,
    "googlenet": models.GoogLeNet_Weights.IMAGENET1K_V1,
    "densenet121": models.DenseNet121_Weights.IMAGENET1K_V1,
}

ops = {name: {"gmacs": weights.meta["_ops"], "num_params": weights.meta["num_params"]} for name, weights in WEIGHTS.items()}
with open("tests/fixtures/torchvision_ops.json", "w") as out:
    json.dump(ops, out, indent=1, sort_keys=True)
print(json.dumps(ops, indent=1))
