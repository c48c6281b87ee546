"""Model factories the compiler tests and bench build from (``path:factory`` on the CLI)."""

from __future__ import annotations

import torch
from torch import nn


class SensorMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class VibrationCNN(nn.Module):
    """1-D CNN over a 6-channel, 256-sample window (accelerometer + gyroscope)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(6, 32, kernel_size=7, padding=3)
        self.conv2 = nn.Conv1d(32, 64, kernel_size=5, stride=2, padding=2)
        self.conv3 = nn.Conv1d(64, 128, kernel_size=5, stride=2, padding=2)
        self.conv4 = nn.Conv1d(128, 128, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        return self.head(x.mean(dim=2))


def mlp() -> SensorMLP:
    return SensorMLP()


def cnn() -> VibrationCNN:
    return VibrationCNN()
