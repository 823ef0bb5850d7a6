"""FLOP counting (models/flops.py): attention counted on the CPU as explicit attention is."""

import torch

from soft_biometrics_ros.models.flops import count_flops

T = 'PE-Core-T-16-384'


def test_attention_flops_equal_explicit_attention():
    """The SDPA formula registered for the CPU kernel counts what explicit attention does."""
    import open_clip

    visual = open_clip.create_model(T, pretrained=None).visual.eval().requires_grad_(False)
    images = torch.randn(1, 3, 384, 384)
    with torch.inference_mode():
        fused = count_flops(lambda: visual(images))
        switched = 0
        for module in visual.modules():
            if getattr(module, 'fused_attn', False):
                module.fused_attn = False  # timm's explicit q @ k^T, softmax, @ v path
                switched += 1
        explicit = count_flops(lambda: visual(images))
    assert switched >= 12
    assert explicit.attention == 0 and fused.attention > 0
    assert fused.total == explicit.total
    # 12 blocks x 4 x tokens^2 x width (+ the attention-pooling latent), tokens = 24^2.
    tokens, width = 576, 192
    assert fused.attention >= 12 * 4 * tokens ** 2 * width
