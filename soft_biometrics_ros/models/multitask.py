"""The adapted multitask model: PE-Core vision tower + one MLP head per task.

    images (N, 3, S, S) -> visual -> pooled embedding (N, E) -> heads[task] -> (N, C_task)

The vision tower is open_clip's `model.visual` (text tower dropped). An adaptation
method from `soft_biometrics_ros.models.adapters` (linear probe, partial fine-tuning, LoRA,
DoRA, LoRA+, MTLoRA) decides which weights train and may wrap the tower; MTLoRA's
tower returns one embedding per task (a dict task -> (N, E)) instead of one shared one.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.adapters import apply_method, get_method, merge_for_inference
from soft_biometrics_ros.models.backbone import (
    NO_WEIGHTS, OFFLINE_BACKBONE, ParameterCounts, PreprocessConfig, count_parameters,
    load_vision_tower)
from soft_biometrics_ros.models.classifier import FaceClassifier
from soft_biometrics_ros.models.heads import HeadConfig, MultitaskHeads

logger = logging.getLogger(__name__)


class MultitaskModel(FaceClassifier):
    """PE-Core vision tower + per-task MLP heads; forward gives task -> logits.

    visual: images (N, 3, S, S) -> embeddings (N, E), or task -> (N, E) for MTLoRA.
    heads: task -> TaskHead, embeddings (N, E) -> logits (N, C_task).

    Besides the FaceClassifier attributes it records how it was built, which the
    checkpoint stores: `pretrained` (backbone weights source), `backbone_fingerprint`
    (hash of those weights), `head_config`, `embed_dim`, and, once an adaptation method
    is applied, `method_name`, `method_config`, `merged` and `tuned_parameter_names`
    (the parameters the method trains, plus weights changed by merging).
    """

    def __init__(self, visual: nn.Module, embed_dim: int, backbone_name: str,
                 preprocess_config: PreprocessConfig, head_config: Optional[HeadConfig] = None,
                 pretrained: str = NO_WEIGHTS, backbone_fingerprint: str = '',
                 backbone_parameter_counts: Optional[ParameterCounts] = None,
                 untrained: bool = True):
        super().__init__(backbone_name, preprocess_config, untrained)
        self.head_config = head_config or HeadConfig()
        self.embed_dim = int(embed_dim)
        self.visual = visual
        self.heads = MultitaskHeads(self.embed_dim, labels.NUM_CLASSES, self.head_config)
        self.pretrained = pretrained
        self.backbone_fingerprint = backbone_fingerprint
        self.backbone_parameter_counts = backbone_parameter_counts
        self.method_name: Optional[str] = None
        self.method_config = None
        self.merged = False
        self.tuned_parameter_names: Optional[List[str]] = None

    @property
    def backbone_untrained(self) -> bool:
        """Whether the vision tower started from random weights (pretrained='none')."""
        return self.pretrained == NO_WEIGHTS

    @property
    def has_unmerged_adapters(self) -> bool:
        """Whether the adaptation method's adapters still run beside the base weights."""
        return self.method_name is not None and not self.merged and \
            get_method(self.method_name).merge is not None

    def merge_adapters(self) -> List[str]:
        """Fold LoRA/DoRA/LoRA+/MTLoRA adapters into the weights, in place (inference).

        Same outputs up to rounding, without the adapter matmuls (DoRA also recomputes a
        weight norm every forward when unmerged). Returns the names of the weights the
        merge changed (empty, falsy, for models without adapters: linear probe, partial,
        none); merging twice changes nothing.
        """
        if not self.has_unmerged_adapters:
            return []
        return merge_for_inference(self)

    def features(self, images: torch.Tensor) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Pooled image embeddings: (N, E), or task -> (N, E) with per-task streams."""
        return self.visual(images)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Map images (N, 3, S, S) to task -> logits (N, C_task), schema class order."""
        return self.heads(self.features(images))

    def parameter_summary(self) -> Dict[str, int]:
        """Return parameter counts: vision tower, heads, total, trainable."""
        return {
            'vision': count_parameters(self.visual),
            'heads': count_parameters(self.heads),
            'total': count_parameters(self),
            'trainable': sum(p.numel() for p in self.parameters() if p.requires_grad),
        }


def build_multitask_model(backbone: str = OFFLINE_BACKBONE,
                          pretrained: Optional[str] = NO_WEIGHTS,
                          head_config: Union[HeadConfig, Mapping, None] = None,
                          method: Optional[str] = None, method_config=None,
                          device: Union[str, torch.device] = 'cpu',
                          cache_dir: Optional[str] = None,
                          image_size: Optional[int] = None) -> MultitaskModel:
    """Build a MultitaskModel with fresh (untrained) heads, optionally adapted by `method`.

    backbone: a PE-Core name; pretrained: 'meta', a weights file or 'none'.
    head_config: a HeadConfig or its dict. method/method_config: an adaptation method
    name and its config (dataclass or dict; None for defaults), see
    `soft_biometrics_ros.models.adapters.list_methods()`. image_size: input side in pixels
    (None = the backbone's own; see backbone.load_pe_core).
    """
    if isinstance(head_config, Mapping):
        head_config = HeadConfig.from_dict(head_config)
    pe_core = load_vision_tower(backbone, pretrained, device='cpu', cache_dir=cache_dir,
                                image_size=image_size)
    model = MultitaskModel(
        visual=pe_core.model, embed_dim=pe_core.embed_dim, backbone_name=pe_core.name,
        preprocess_config=pe_core.preprocess, head_config=head_config,
        pretrained=pe_core.pretrained, backbone_fingerprint=pe_core.fingerprint,
        backbone_parameter_counts=pe_core.parameter_counts, untrained=True)
    if method is not None:
        apply_method(model, method, method_config)
    return model.to(torch.device(device))
