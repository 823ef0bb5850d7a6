"""Classification heads: one small MLP per task on the pooled PE-Core image embedding."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Mapping

import torch
from torch import nn

from soft_biometrics_ros.settings import from_mapping, setting, validate

ACTIVATIONS = {'gelu': nn.GELU, 'relu': nn.ReLU, 'silu': nn.SiLU}


@dataclass
class HeadConfig:
    """Shape of every task head: Linear(E, hidden_dim) -> activation -> Dropout -> Linear."""

    hidden_dim: int = setting(512, 'Width of the one hidden layer.', low=1)
    dropout: float = setting(0.1, 'Dropout probability before the output layer.', low=0.0,
                             high=1.0, high_open=True)
    activation: str = setting('gelu', 'Activation of the hidden layer.',
                              choices=tuple(ACTIVATIONS))

    def __post_init__(self):
        validate(self, 'heads')

    def to_dict(self) -> dict:
        """Return plain data (as stored in checkpoint manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> 'HeadConfig':
        """Build from plain data, naming any unknown field."""
        return from_mapping(cls, data, 'heads')


class TaskHead(nn.Module):
    """MLP head of one task: embeddings (N, in_features) -> logits (N, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, config: HeadConfig):
        super().__init__()
        self.fc1 = nn.Linear(in_features, config.hidden_dim)
        self.act = ACTIVATIONS[config.activation]()
        self.drop = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.hidden_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map (N, in_features) embeddings to (N, num_classes) logits."""
        return self.fc2(self.drop(self.act(self.fc1(features))))


class MultitaskHeads(nn.ModuleDict):
    """One TaskHead per task, keyed by task name (in schema order)."""

    def __init__(self, in_features: int, num_classes: Mapping[str, int], config: HeadConfig):
        super().__init__({task: TaskHead(in_features, n, config)
                          for task, n in num_classes.items()})

    def forward(self, features) -> Dict[str, torch.Tensor]:
        """Return task -> logits (N, C_task).

        `features` is one (N, E) tensor shared by all tasks, or a mapping task -> (N, E)
        when the backbone gives each task its own feature stream (MTLoRA).
        """
        if isinstance(features, Mapping):
            return {task: head(features[task]) for task, head in self.items()}
        return {task: head(features) for task, head in self.items()}
