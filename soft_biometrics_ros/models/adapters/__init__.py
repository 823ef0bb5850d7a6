"""Adaptation methods of the multitask model, in one registry (timm-style).

    from soft_biometrics_ros.models.adapters import apply_method, list_methods
    report = apply_method(model, 'lora', {'rank': 8})   # -> TrainableParameters
    optimizer = build_optimizer(model, lr=1e-4)           # LoRA+ gets its own groups
    merge_for_inference(model)                            # LoRA/DoRA/LoRA+/MTLoRA shared

Methods: linear_probe, partial, lora, dora, loraplus, mtlora. Each is a config dataclass
(validated at construction, errors name the field) and an apply function.
"""

from soft_biometrics_ros.models.adapters.registry import (  # noqa: F401
    AdaptationMethod, TrainableParameters, apply_method, build_optimizer, config_to_dict,
    default_param_groups, get_method, list_methods, merge_for_inference, method_config,
    register_method, trainable_parameters)
from soft_biometrics_ros.models.adapters.linear_probe import LinearProbeConfig  # noqa: F401,E402
from soft_biometrics_ros.models.adapters.partial import PartialConfig  # noqa: F401,E402
from soft_biometrics_ros.models.adapters.lora import (  # noqa: F401,E402
    BLOCK_LINEARS, DoraAdapterConfig, LoraAdapterConfig, LoraPlusAdapterConfig,
    block_linears_regex, build_loraplus_optimizer, merge_lora)
from soft_biometrics_ros.models.adapters.mtlora import (  # noqa: F401,E402
    MTLoRAConfig, MTLoRALinear, TaskStreamVisionTower, merge_mtlora)
