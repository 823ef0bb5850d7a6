"""The adaptation-method registry: method name -> (config dataclass, apply function, hooks).

timm-style: each method module registers itself with `@register_method(name, ConfigClass,
...)` on its apply function; the trainer, the checkpoint loader and the node only use the
functions below, never an if/elif over method names.

A method's apply function receives the MultitaskModel (its vision tower already frozen,
its heads trainable) and its validated config; it unfreezes or wraps what the method
trains. Optional hooks: `merge` folds adapters into the base weights for inference and
returns the names of the parameters it changed; `build_optimizer` builds the optimizer
when the method needs its own parameter groups (LoRA+).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptationMethod:
    """One registered method: its name, config class, apply function and optional hooks."""

    name: str
    config_cls: type
    apply: Callable
    merge: Optional[Callable] = None
    build_optimizer: Optional[Callable] = None
    description: str = ''


_METHODS: Dict[str, AdaptationMethod] = {}


def register_method(name: str, config_cls: type, *, merge: Optional[Callable] = None,
                    build_optimizer: Optional[Callable] = None, description: str = ''):
    """Register the decorated `apply(model, config)` function as method `name`."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f'config class of method {name!r} must be a dataclass')

    def decorator(apply: Callable) -> Callable:
        if name in _METHODS:
            raise ValueError(f'adaptation method {name!r} is registered twice')
        _METHODS[name] = AdaptationMethod(
            name=name, config_cls=config_cls, apply=apply, merge=merge,
            build_optimizer=build_optimizer,
            description=description or (apply.__doc__ or '').strip().split('\n')[0])
        return apply
    return decorator


def list_methods() -> List[str]:
    """Return the registered method names, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> AdaptationMethod:
    """Return the registered method `name`, with an error listing the known ones."""
    if name not in _METHODS:
        raise ValueError(f'unknown adaptation method {name!r}; known methods: '
                         f'{", ".join(_METHODS)}')
    return _METHODS[name]


def method_config(name: str, config=None):
    """Return the validated config dataclass of method `name`.

    `config` is None (defaults), a dict of fields (unknown fields are named in the
    error), or an instance of the method's config class.
    """
    spec = get_method(name)
    if config is None:
        return spec.config_cls()
    if isinstance(config, spec.config_cls):
        return config
    if dataclasses.is_dataclass(config):
        raise TypeError(f'method {name!r} takes a {spec.config_cls.__name__}, got '
                        f'{type(config).__name__}')
    if not isinstance(config, Mapping):
        raise TypeError(f'config of method {name!r} must be a mapping or '
                        f'{spec.config_cls.__name__}, got {type(config).__name__}')
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f'unknown field(s) {", ".join(unknown)} for method {name!r}; '
                         f'its fields are {", ".join(sorted(fields))}')
    return spec.config_cls(**dict(config))


def config_to_dict(config) -> dict:
    """Return a method config as plain JSON data (tuples become lists)."""
    data = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class TrainableParameters:
    """How many of a model's parameters train: count, total and percentage."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f'trainable params: {self.trainable:,d} || all params: {self.total:,d} || '
                f'trainable%: {self.percent:.4f}')


def trainable_parameters(model: nn.Module) -> TrainableParameters:
    """Count the parameters of `model` with requires_grad, and all of them."""
    params = list(model.parameters())
    return TrainableParameters(trainable=sum(p.numel() for p in params if p.requires_grad),
                               total=sum(p.numel() for p in params))


def apply_method(model: nn.Module, name: str, config=None) -> TrainableParameters:
    """Adapt a MultitaskModel with method `name` in place and report its trainable parameters.

    Freezes the vision tower, keeps the heads trainable, then runs the method's apply
    function. Records `method_name`, `method_config` and `tuned_parameter_names` on the
    model (what a checkpoint stores) and logs the trainable count and percentage.
    """
    if getattr(model, 'method_name', None) is not None:
        raise ValueError(f'model is already adapted with method {model.method_name!r}; '
                         f'build a fresh model to apply {name!r}')
    spec = get_method(name)
    config = method_config(name, config)
    model.visual.requires_grad_(False)
    model.heads.requires_grad_(True)
    spec.apply(model, config)
    model.method_name = name
    model.method_config = config
    model.merged = False
    model.tuned_parameter_names = [n for n, p in model.named_parameters() if p.requires_grad]
    report = trainable_parameters(model)
    logger.info('adaptation method %s: %s', name, report)
    return report


def merge_for_inference(model: nn.Module) -> List[str]:
    """Fold the method's adapters into the base weights (LoRA/DoRA/LoRA+, MTLoRA's shared part).

    Returns the names of the parameters the merge changed; they join
    `model.tuned_parameter_names` so that a checkpoint of the merged model stores them.
    Methods without adapters (linear_probe, partial) are left as they are. Merging twice
    is a no-op. Outputs are unchanged up to floating-point rounding.
    """
    name = getattr(model, 'method_name', None)
    if name is None:
        raise ValueError('model has no adaptation method to merge; apply_method first')
    spec = get_method(name)
    if spec.merge is None or model.merged:
        return []
    changed = list(spec.merge(model, model.method_config))
    existing = {n for n, _ in model.named_parameters()}
    kept = [n for n in model.tuned_parameter_names if n in existing]
    model.tuned_parameter_names = kept + [n for n in changed if n not in kept]
    model.merged = True
    logger.info('merged %s adapters: %d base weights changed', name, len(changed))
    return changed


def default_param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Return AdamW-style groups of the trainable parameters: matrices decay, the rest not."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{'params': decay, 'weight_decay': weight_decay},
              {'params': no_decay, 'weight_decay': 0.0}]
    return [g for g in groups if g['params']]


def build_optimizer(model: nn.Module, optimizer_cls: type = torch.optim.AdamW, lr: float = 1e-3,
                    weight_decay: float = 0.01, **kwargs) -> torch.optim.Optimizer:
    """Build the optimizer of an adapted model's trainable parameters.

    Methods with their own hook (LoRA+: B matrices at `loraplus_lr_ratio` x lr, through
    peft's create_loraplus_optimizer) use it; the others get `default_param_groups`.
    Extra parameters (e.g. a loss's learned weights) can be added afterwards with
    `optimizer.add_param_group`.
    """
    name = getattr(model, 'method_name', None)
    spec = get_method(name) if name is not None else None
    if spec is not None and spec.build_optimizer is not None:
        return spec.build_optimizer(model, model.method_config, optimizer_cls, lr=lr,
                                    weight_decay=weight_decay, **kwargs)
    return optimizer_cls(default_param_groups(model, weight_decay), lr=lr, **kwargs)


def require(ok: bool, field_name: str, message: str) -> None:
    """Raise ValueError naming the config field `field_name` (e.g. 'lora.rank') unless `ok`."""
    if not ok:
        raise ValueError(f'{field_name} {message}')
