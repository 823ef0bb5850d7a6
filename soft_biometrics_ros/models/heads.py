"""Classification heads: one small MLP per task on the pooled PE-Core image embedding."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Mapping

import torch
from torch import nn

ACTIVATIONS = {'gelu': nn.GELU, 'relu': nn.ReLU, 'silu': nn.SiLU}


@dataclass
class HeadConfig:
    """Shape of every task head: Linear(E, hidden_dim) -> activation -> Dropout -> Linear.

    hidden_dim: width of the one hidden layer. dropout: dropout probability before the
    output layer (in [0, 1)). activation: 'gelu', 'relu' or 'silu'.
    """

    hidden_dim: int = 512
    dropout: float = 0.1
    activation: str = 'gelu'

    def __post_init__(self):
        if not isinstance(self.hidden_dim, int) or isinstance(self.hidden_dim, bool) \
                or self.hidden_dim < 1:
            raise ValueError(f'heads.hidden_dim must be a positive int, got {self.hidden_dim!r}')
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f'heads.dropout must be in [0, 1), got {self.dropout!r}')
        if self.activation not in ACTIVATIONS:
            raise ValueError(f'heads.activation {self.activation!r} is not one of '
                             f'{", ".join(ACTIVATIONS)}')

    def to_dict(self) -> dict:
        """Return plain data (as stored in checkpoint manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> 'HeadConfig':
        """Build from plain data, naming any unknown field."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f'unknown heads field(s) {", ".join(sorted(unknown))}; known: '
                             f'{", ".join(cls.__dataclass_fields__)}')
        return cls(**dict(data))


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
