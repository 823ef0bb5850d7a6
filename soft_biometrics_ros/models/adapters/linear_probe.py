"""`linear_probe`: the PE-Core backbone stays frozen; only the task heads train."""

from __future__ import annotations

from dataclasses import dataclass

from soft_biometrics_ros.models.adapters.registry import register_method


@dataclass
class LinearProbeConfig:
    """Linear probing has no options: every backbone weight is frozen."""


@register_method('linear_probe', LinearProbeConfig)
def apply_linear_probe(model, config: LinearProbeConfig) -> None:
    """Freeze the whole vision tower; the heads (already trainable) are all that train."""
    model.visual.requires_grad_(False)
