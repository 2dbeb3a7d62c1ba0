"""Backbones: `create_model(arch, num_classes, seed)` -> a module whose forward returns (logits, features).

Models are built on the meta device and initialised from an explicit generator, so construction never touches
torch's global RNG and the same seed gives the same weights whatever ran before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """The 'CIFAR ResNet-18' of METHOD.md §2: 3x3 stem without max-pool, 4 stages of 2 BasicBlocks, 512-d feature
    after global average pooling (non-negative: it follows the last ReLU), linear classifier with bias."""

    feature_dim = 512

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        features = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(features), features


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU layers and a linear head: a few % of ResNet-18's cost, for CPU smoke runs and tests."""

    feature_dim = 128

    def __init__(self, num_classes: int):
        super().__init__()
        widths = (32, 64, 128, 128)
        blocks, in_ch = [], 3
        for i, out_ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)
        return self.fc(features), features


ARCHITECTURES = {"resnet18": CifarResNet18, "small-cnn": SmallCNN}


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Reference init (§2): convs Kaiming-normal (fan_out, relu); BN weight 1, bias 0, fresh running stats;
    Linear with PyTorch's default (Kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))). Modules in a fixed order."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            module.num_batches_tracked.zero_()
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(module.in_features)
            module.bias.uniform_(-bound, bound, generator=generator)


def create_model(arch: str, num_classes: int, seed: int, device: torch.device | str = "cpu",
                 precision: str = "fp32") -> nn.Module:
    """Build `arch` for `num_classes`, initialised from `seed` on the CPU (so the weights are the same on every
    device), then moved to `device`. precision='bf16' stores the weights channels_last, the layout ModelHandle feeds
    them under autocast."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r}: choose one of {sorted(ARCHITECTURES)}")
    with torch.device("meta"):
        model = ARCHITECTURES[arch](num_classes)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    init_parameters(model, generator)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if precision == "bf16" else model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel (or compiled) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


class ModelHandle:
    """What a method sees of the model: `handle(x) -> (logits, features)` in fp32 and the classifier layer.

    bf16 runs the backbone under autocast with channels_last inputs (METHOD.md §11.16); the outputs are cast back to
    fp32 here, so every softmax, log, KL, confidence and prior computation downstream stays in fp32.
    """

    def __init__(self, net: nn.Module, precision: str = "fp32"):
        self.net = net
        self.precision = precision
        self.device_type = next(net.parameters()).device.type

    @property
    def classifier(self) -> nn.Linear:
        return unwrap(self.net).fc

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                logits, features = self.net(x)
            return logits.float(), features.float()
        return self.net(x)
