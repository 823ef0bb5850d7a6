"""`mtlora`: MTLoRA (Agiza et al., CVPR 2024) for a plain ViT (PE-Core's Eva trunk).

peft has no MTLoRA, so it is written here in peft's shape: a config dataclass, an
apply function, and a LoRA-style linear wrapper (`MTLoRALinear`, the paper's MT-LoRA
module) whose base layer stays frozen.

- Task-agnostic low-rank modules (rank `shared_rank`) sit in every block's attn.qkv,
  attn.proj, mlp.fc1 and mlp.fc2; all tasks share them.
- From block `depth - k_last_blocks` on, the token sequence is split into one feature
  stream per task (`TaskStreamVisionTower`): the batch is repeated once per task,
  stream-major, (N, L, D) -> (T*N, L, D). In those last blocks every linear also has
  task-specific low-rank modules (rank `task_rank`), and stream t only passes through
  task t's module; with `task_pool` the attention pooling's linears (q, kv, proj,
  mlp.fc1, mlp.fc2) get task-specific modules too. Each task's pooled embedding feeds
  that task's head, so task t's modules get gradients from task t's loss only.

Merging folds the shared modules into the base weights (the first blocks become plain
linears again); the task-specific ones stay, as they act on separate streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.adapters.lora import (adapter_alpha, adapter_dropout,
                                                      adapter_rank, adapter_targets)
from soft_biometrics_ros.models.adapters.registry import register_method, require
from soft_biometrics_ros.settings import setting, validate
from soft_biometrics_ros.models.backbone import vision_trunk

POOL_LINEARS: Tuple[str, ...] = ('q', 'kv', 'proj', 'mlp.fc1', 'mlp.fc2')


@dataclass
class MTLoRAConfig:
    """MTLoRA hyper-parameters (the LoRA fields' rules are shared with lora.py)."""

    shared_rank: int = adapter_rank(8, 'Rank of the task-agnostic modules in every block.')
    task_rank: int = adapter_rank(4, "Rank of each task's modules in the last blocks (and "
                                     'the pooling).')
    alpha: float = adapter_alpha()
    dropout: float = adapter_dropout(0.0)
    k_last_blocks: int = setting(4, 'Number of final blocks with one feature stream per '
                                    'task (1..depth).', low=1)
    task_pool: bool = setting(True, 'Give the attention pooling task-specific modules too.')
    targets: Tuple[str, ...] = adapter_targets()

    def __post_init__(self):
        validate(self, 'mtlora')


class MTLoRALinear(nn.Module):
    """A frozen nn.Linear plus a shared low-rank update and optional per-task ones.

    Without tasks: x (N, ..., in) -> base(x) + s_shared * B_sh A_sh x, (N, ..., out).
    With tasks (t_1..t_T): x is T streams stacked stream-major, (T*N, ..., in); stream i
    additionally gets s_task * B_ti A_ti x_i. A matrices: (rank, in), kaiming-uniform;
    B matrices: (out, rank), zeros, so a fresh module leaves the output unchanged.
    shared_rank 0 means no shared module (used in the attention pooling).
    """

    def __init__(self, base_layer: nn.Linear, shared_rank: int, task_rank: int,
                 tasks: Sequence[str], alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f'MTLoRALinear wraps nn.Linear, got {type(base_layer).__name__}')
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.tasks = tuple(tasks)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base_layer.weight
        if shared_rank > 0:
            self.shared_lora_A = nn.Parameter(weight.new_empty(shared_rank, self.in_features))
            self.shared_lora_B = nn.Parameter(weight.new_zeros(self.out_features, shared_rank))
            nn.init.kaiming_uniform_(self.shared_lora_A, a=math.sqrt(5))
            self.shared_scaling = alpha / shared_rank
        else:
            self.register_parameter('shared_lora_A', None)
            self.register_parameter('shared_lora_B', None)
            self.shared_scaling = 0.0
        self.task_lora_A = nn.ParameterDict()
        self.task_lora_B = nn.ParameterDict()
        for task in self.tasks:
            self.task_lora_A[task] = nn.Parameter(weight.new_empty(task_rank, self.in_features))
            self.task_lora_B[task] = nn.Parameter(weight.new_zeros(self.out_features, task_rank))
            nn.init.kaiming_uniform_(self.task_lora_A[task], a=math.sqrt(5))
        self.task_scaling = alpha / task_rank if self.tasks else 0.0

    @property
    def has_shared(self) -> bool:
        """Whether the (unmerged) shared module is present."""
        return self.shared_lora_A is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply base + shared + per-stream task updates; see the class docstring for shapes."""
        out = self.base_layer(x)
        if not self.has_shared and not self.tasks:
            return out
        h = self.dropout(x)
        if self.has_shared:
            out = out + F.linear(F.linear(h, self.shared_lora_A), self.shared_lora_B) \
                * self.shared_scaling
        if self.tasks:
            streams = len(self.tasks)
            if h.shape[0] % streams:
                raise RuntimeError(
                    f'MTLoRALinear with {streams} task streams got a batch of {h.shape[0]}, '
                    f'not a multiple of {streams}; run it inside TaskStreamVisionTower')
            deltas = [F.linear(F.linear(chunk, self.task_lora_A[task]), self.task_lora_B[task])
                      for task, chunk in zip(self.tasks, h.chunk(streams, dim=0))]
            out = out + torch.cat(deltas, dim=0) * self.task_scaling
        return out

    @torch.no_grad()
    def merge_shared(self) -> None:
        """Fold the shared update into the base weight and drop the shared module."""
        if not self.has_shared:
            return
        weight = self.base_layer.weight
        delta = (self.shared_lora_B.float() @ self.shared_lora_A.float()) * self.shared_scaling
        weight.add_(delta.to(weight.dtype))
        self.shared_lora_A = None
        self.shared_lora_B = None

    def extra_repr(self) -> str:
        """Describe the ranks and task streams in the module repr."""
        shared = self.shared_lora_A.shape[0] if self.has_shared else 0
        task = next(iter(self.task_lora_A.values())).shape[0] if self.tasks else 0
        return f'shared_rank={shared}, task_rank={task}, tasks={self.tasks}'


class TaskStreamVisionTower(nn.Module):
    """Vision tower with one feature stream per task from block `split_block` on.

    images (N, 3, S, S) -> dict task -> pooled embedding (N, E). The trunk runs once,
    shared, up to block `split_block`; a forward pre-hook there repeats the tokens
    (N, L, D) -> (T*N, L, D), stream-major in `tasks` order, and the rest of the trunk
    (blocks, norm, attention pooling, projection) runs on all streams in one batch.
    """

    def __init__(self, tower: nn.Module, tasks: Sequence[str], split_block: int):
        super().__init__()
        self.tower = tower
        self.tasks = tuple(tasks)
        self.split_block = int(split_block)
        trunk = vision_trunk(tower)
        self._split_hook = trunk.blocks[self.split_block].register_forward_pre_hook(
            self._split_streams)

    @property
    def trunk(self) -> nn.Module:
        """The timm Eva trunk of the wrapped tower."""
        return self.tower.trunk

    def _split_streams(self, module: nn.Module, args: tuple) -> tuple:
        tokens = args[0]
        repeats = (len(self.tasks),) + (1,) * (tokens.ndim - 1)
        return (tokens.repeat(*repeats),) + tuple(args[1:])

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Map images (N, 3, S, S) to task -> embedding (N, E)."""
        pooled = self.tower(images)
        return dict(zip(self.tasks, pooled.chunk(len(self.tasks), dim=0)))


def _wrap(root: nn.Module, name: str, **kwargs) -> MTLoRALinear:
    parent_name, _, attr = name.rpartition('.')
    parent = root.get_submodule(parent_name) if parent_name else root
    wrapper = MTLoRALinear(getattr(parent, attr), **kwargs)
    setattr(parent, attr, wrapper)
    return wrapper


@register_method('mtlora', MTLoRAConfig, merge=lambda model, config: merge_mtlora(model))
def apply_mtlora(model, config: MTLoRAConfig) -> None:
    """MTLoRA: shared low-rank modules in every block, per-task streams in the last blocks."""
    tasks = labels.TASKS
    trunk = vision_trunk(model.visual)
    depth = len(trunk.blocks)
    require(config.k_last_blocks <= depth, 'mtlora.k_last_blocks',
            f'is {config.k_last_blocks} but {model.backbone_name} has only {depth} blocks')
    split = depth - config.k_last_blocks
    common = dict(alpha=config.alpha, dropout=config.dropout)
    for index, block in enumerate(trunk.blocks):
        streams = tasks if index >= split else ()
        for target in config.targets:
            _wrap(block, target, shared_rank=config.shared_rank, task_rank=config.task_rank,
                  tasks=streams, **common)
    if config.task_pool and getattr(trunk, 'attn_pool', None) is not None:
        for target in POOL_LINEARS:
            _wrap(trunk.attn_pool, target, shared_rank=0, task_rank=config.task_rank,
                  tasks=tasks, **common)
    model.visual = TaskStreamVisionTower(model.visual, tasks, split)
    for name, param in model.visual.named_parameters():
        param.requires_grad_('_lora_' in name)


def merge_mtlora(model) -> List[str]:
    """Merge the shared modules into the base linears; unwrap linears left without tasks.

    Returns the model-level names of the changed base weights.
    """
    changed = []
    wrappers = [(n, m) for n, m in model.named_modules() if isinstance(m, MTLoRALinear)]
    for name, wrapper in wrappers:
        if not wrapper.has_shared:
            continue
        wrapper.merge_shared()
        if wrapper.tasks:
            changed.append(f'{name}.base_layer.weight')
        else:
            parent_name, _, attr = name.rpartition('.')
            setattr(model.get_submodule(parent_name), attr, wrapper.base_layer)
            changed.append(f'{name}.weight')
    return changed
