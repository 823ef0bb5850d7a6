"""`partial`: fine-tune the last transformer blocks and the attention pooling of PE-Core.

Trains, besides the heads: the last `last_blocks` Eva blocks, the final norm
(`trunk.norm`), the attention-pooling head (`trunk.attn_pool`: latent query, q, kv,
proj, its norm and MLP) and the projection to the embedding (`trunk.head`), each
switchable in the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from soft_biometrics_ros.models.adapters.registry import register_method, require
from soft_biometrics_ros.settings import setting, validate
from soft_biometrics_ros.models.backbone import vision_trunk


@dataclass
class PartialConfig:
    """Which parts of the vision tower train."""

    last_blocks: int = setting(4, 'Number of final transformer blocks to train (0..depth).',
                               low=0)
    train_attn_pool: bool = setting(True, 'Train the attention pooling (trunk.attn_pool).')
    train_final_norm: bool = setting(True, 'Train the final LayerNorm before pooling '
                                           '(trunk.norm).')
    train_projection: bool = setting(True, 'Train the projection to the embedding '
                                           '(trunk.head).')

    def __post_init__(self):
        validate(self, 'partial')


@register_method('partial', PartialConfig)
def apply_partial(model, config: PartialConfig) -> None:
    """Unfreeze the last blocks, final norm, attention pooling and projection head."""
    trunk = vision_trunk(model.visual)
    depth = len(trunk.blocks)
    require(config.last_blocks <= depth, 'partial.last_blocks',
            f'is {config.last_blocks} but {model.backbone_name} has only {depth} blocks')
    for block in list(trunk.blocks)[depth - config.last_blocks:]:
        block.requires_grad_(True)
    if config.train_final_norm:
        trunk.norm.requires_grad_(True)
        trunk.fc_norm.requires_grad_(True)
    if config.train_attn_pool and getattr(trunk, 'attn_pool', None) is not None:
        trunk.attn_pool.requires_grad_(True)
    if config.train_projection:
        trunk.head.requires_grad_(True)
