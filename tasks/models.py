"""The models FedVault tasks train: small enough for CPUs, and all Opacus-compatible.

DP-SGD needs per-sample gradients, which BatchNorm breaks (it mixes samples in a batch), so
normalisation here is GroupNorm; `tests/test_models.py` checks every model with Opacus'
ModuleValidator.
"""

from __future__ import annotations

import torch
from torch import nn


class CNN1D(nn.Module):
    """A 1-D CNN for MNIST-1D (40 samples per sequence, 10 classes).

    `private=True` gives the DP-SGD variant: narrower and with tanh. Under DP-SGD every
    parameter receives noise, and bounded activations keep gradients stable under clipping
    (Papernot et al. 2021); it measured better at epsilon 3 than 32 ReLU channels, which in
    turn learn better without noise (docs/benchmarks.md).
    """

    def __init__(self, length: int = 40, num_classes: int = 10, private: bool = False) -> None:
        super().__init__()
        channels = 16 if private else 32
        layers: list[nn.Module] = []
        for index, (kernel, stride) in enumerate(((5, 1), (3, 2), (3, 2))):
            layers += [
                nn.Conv1d(1 if index == 0 else channels, channels, kernel, stride, kernel // 2),
                nn.GroupNorm(4, channels),
                nn.Tanh() if private else nn.ReLU(),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * ((length + 3) // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


class DigitsCNN(nn.Module):
    """A small 2-D CNN for scikit-learn's 8x8 digits (64 features, 10 classes)."""

    def __init__(self, num_classes: int = 10, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.GroupNorm(4, channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(4, 2 * channels),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * channels * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)).flatten(1))


class MLP(nn.Module):
    """A two-hidden-layer perceptron for encoded tabular features."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
