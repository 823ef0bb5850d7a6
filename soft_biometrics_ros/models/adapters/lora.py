"""`lora`, `dora`, `loraplus`: peft low-rank adapters on the PE-Core blocks' linears.

peft's LoRA layers are injected into the vision tower (`peft.inject_adapter_in_model`)
on `trunk.blocks.N.attn.qkv`, `attn.proj`, `mlp.fc1` and `mlp.fc2`, selected by a
regular expression: a bare name list would also match the attention pooling's `proj`
and `mlp.fc1/fc2`. DoRA is the same with `use_dora=True`; LoRA+ is LoRA whose
optimizer (peft's `create_loraplus_optimizer`) gives the B matrices
`loraplus_lr_ratio` x the learning rate. Merging folds the adapters into the base
linears (peft's merge, then the base layer replaces the wrapper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Tuple

import torch

from soft_biometrics_ros.models.adapters.registry import register_method
from soft_biometrics_ros.settings import setting, validate

BLOCK_LINEARS: Tuple[str, ...] = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')


def block_linears_regex(targets) -> str:
    """Return the regex (re.fullmatch on module names) of the blocks' target linears."""
    alternatives = '|'.join(re.escape(t) for t in targets)
    return rf'(?:.*\.)?trunk\.blocks\.\d+\.(?:{alternatives})'


# The settings LoRA-style configs share (LoRA, DoRA, LoRA+, MTLoRA): declared once here.

def adapter_rank(default: int, help: str):
    """Return the setting of a low-rank module's rank: an integer >= 1."""
    return setting(default, help, low=1)


def adapter_alpha():
    """Return the setting of the scaling numerator alpha > 0 (update = alpha / rank x B A)."""
    return setting(16.0, 'Scaling numerator: an update is alpha / rank x B A.', low=0.0,
                   low_open=True)


def adapter_dropout(default: float):
    """Return the setting of the dropout on the adapters' input, in [0, 1)."""
    return setting(default, "Dropout on the adapters' input.", low=0.0, high=1.0,
                   high_open=True)


def adapter_targets():
    """Return the setting of which block linears get adapters (a subset of BLOCK_LINEARS)."""
    return setting(BLOCK_LINEARS, 'Which block linears get adapters.', kind='names',
                   choices=BLOCK_LINEARS)


@dataclass
class LoraAdapterConfig:
    """Low-rank adapters on every block's linears (the `lora` method's config)."""

    rank: int = adapter_rank(8, 'Rank r of each adapter.')
    alpha: float = adapter_alpha()
    dropout: float = adapter_dropout(0.05)
    targets: Tuple[str, ...] = adapter_targets()

    def __post_init__(self):
        validate(self, self._prefix())

    def _prefix(self) -> str:
        return 'lora'


@dataclass
class LoraPlusAdapterConfig(LoraAdapterConfig):
    """LoRA with LoRA+ learning rates: B matrices train at `loraplus_lr_ratio` x lr."""

    loraplus_lr_ratio: float = setting(16.0, 'Learning-rate ratio of the B matrices to the A '
                                       'matrices.', low=1.0)

    def _prefix(self) -> str:
        return 'loraplus'


@dataclass
class DoraAdapterConfig(LoraAdapterConfig):
    """DoRA: the LoRA fields; the method adds a trained magnitude per output feature."""

    def _prefix(self) -> str:
        return 'dora'


def _inject(model, config: LoraAdapterConfig, use_dora: bool) -> None:
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from soft_biometrics_ros.models.backbone import vision_trunk

    trunk = vision_trunk(model.visual)
    peft_config = PeftLoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=block_linears_regex(config.targets), use_dora=use_dora, bias='none')
    inject_adapter_in_model(peft_config, model.visual)
    wrapped = sum(isinstance(m, LoraLayer) for m in model.visual.modules())
    expected = len(trunk.blocks) * len(config.targets)
    if wrapped != expected:
        raise RuntimeError(f'LoRA wrapped {wrapped} linears of {model.backbone_name}, expected '
                           f'{expected} ({len(trunk.blocks)} blocks x {list(config.targets)})')
    for name, param in model.visual.named_parameters():
        param.requires_grad_('lora_' in name)


def merge_lora(model, config) -> List[str]:
    """Merge peft LoRA/DoRA layers into their base linears and unwrap them.

    Returns the model-level names of the merged base weights (and biases).
    """
    from peft.tuners.lora import LoraLayer

    changed = []
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in targets:
        layer.merge()
        parent_name, _, attr = name.rpartition('.')
        base = layer.get_base_layer()
        setattr(model.get_submodule(parent_name), attr, base)
        changed += [f'{name}.{p}' for p, _ in base.named_parameters()]
    if hasattr(model.visual, 'peft_config'):
        del model.visual.peft_config
    return changed


@register_method('lora', LoraAdapterConfig, merge=merge_lora)
def apply_lora(model, config: LoraAdapterConfig) -> None:
    """Apply LoRA (peft) to every block's attn.qkv, attn.proj, mlp.fc1, mlp.fc2."""
    _inject(model, config, use_dora=False)


@register_method('dora', DoraAdapterConfig, merge=merge_lora)
def apply_dora(model, config: DoraAdapterConfig) -> None:
    """Apply DoRA (peft, use_dora=True): LoRA plus a trained magnitude per output feature."""
    _inject(model, config, use_dora=True)


def build_loraplus_optimizer(model, config: LoraPlusAdapterConfig,
                             optimizer_cls=torch.optim.AdamW, *, lr: float,
                             weight_decay: float = 0.0, **kwargs):
    """Build the LoRA+ optimizer: peft's create_loraplus_optimizer on the vision tower.

    LoRA A matrices train at `lr`, B matrices at `config.loraplus_lr_ratio` x `lr`; the
    task heads are one more group at `lr` (matrices with weight decay, biases without).
    """
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(
        model.visual, optimizer_cls, lr=lr, loraplus_lr_ratio=config.loraplus_lr_ratio,
        loraplus_weight_decay=weight_decay, **kwargs)
    heads = [p for p in model.heads.parameters() if p.requires_grad]
    optimizer.add_param_group({'params': [p for p in heads if p.ndim >= 2],
                               'weight_decay': weight_decay, 'lr': lr})
    optimizer.add_param_group({'params': [p for p in heads if p.ndim < 2],
                               'weight_decay': 0.0, 'lr': lr})
    return optimizer


@register_method('loraplus', LoraPlusAdapterConfig, merge=merge_lora,
                 build_optimizer=build_loraplus_optimizer)
def apply_loraplus(model, config: LoraPlusAdapterConfig) -> None:
    """Apply LoRA+: LoRA adapters; the optimizer hook sets B's learning rate ratio x A's."""
    _inject(model, config, use_dora=False)
