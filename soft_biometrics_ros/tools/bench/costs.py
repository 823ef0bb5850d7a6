"""The cost and training sections: parameters, FLOPs per face, a timed training step."""

from __future__ import annotations

import logging
from typing import Any, Dict

import torch
import torch.nn.functional as F

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.flops import FlopCount, count_flops
from soft_biometrics_ros.tools.bench.config import BenchConfig
from soft_biometrics_ros.tools.bench.timing import (LatencyStats, PeakMemory, autocast,
                                                    release_memory, time_calls)

logger = logging.getLogger('soft_biometrics_bench')


def model_flops_per_face(model: torch.nn.Module, device: torch.device,
                         dtype: torch.dtype = torch.float32) -> FlopCount:
    """Count the FLOPs of one face (batch 1) through `model` (a FaceClassifier), eval mode."""
    size = model.input_size
    images = torch.randn(1, 3, size, size, device=device)
    was_training = model.training
    # FlopCounterMode's module tracker hooks the autograd graph of inputs that require
    # grad, and in torch 2.14 fails on timm's attention pooling (a parameter expanded
    # under no_grad / inference_mode): count with every parameter frozen.
    requires_grad = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for parameter, _ in requires_grad:
            parameter.requires_grad_(False)
        with torch.inference_mode(), autocast(device, dtype):
            return count_flops(lambda: model(images))
    finally:
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)
        model.train(was_training)


def parameter_counts(module: torch.nn.Module) -> Dict[str, int]:
    """Count parameters of `module` (shared tensors once): total and trainable."""
    seen = set()
    total = trainable = 0
    for parameter in module.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return {'total': total, 'trainable': trainable}


def _optimizer_for(model: torch.nn.Module, method: str, lr: float = 1e-4):
    """Return the optimizer training would use: the method's own (LoRA+) or AdamW."""
    try:
        from soft_biometrics_ros.models.adapters import build_optimizer
    except ImportError:
        build_optimizer = None
    if build_optimizer is not None:
        return build_optimizer(model, lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr)


def random_targets(batch: int, device: torch.device, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random labels per task; like the real mix, a third of the emotion labels are missing."""
    generator = torch.Generator().manual_seed(seed)
    targets = {}
    for task in labels.TASKS:
        values = torch.randint(0, labels.NUM_CLASSES[task], (batch,), generator=generator)
        if task == 'emotion' and batch > 1:
            missing = torch.rand(batch, generator=generator) < 1 / 3
            missing[0] = False  # at least one labelled sample: the loss stays finite
            values[missing] = labels.IGNORE_INDEX
        targets[task] = values.to(device)
    return targets


def bench_training_step(model: torch.nn.Module, method: str, batch: int, steps: int,
                        warmup: int, device: torch.device, dtype: torch.dtype,
                        desc: str = '') -> dict:
    """Time optimizer steps (forward, masked cross-entropy summed over tasks, backward, step).

    Random images and labels; the loss is the fixed-weights strategy of training/losses.py
    (the runtime package does not import training). Returns samples/s and peak memory.
    """
    memory = PeakMemory(device)
    size = model.input_size
    images = torch.randn(batch, 3, size, size, device=device)
    targets = random_targets(batch, device)
    model.train()
    optimizer = _optimizer_for(model, method)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            logits = model(images)
        loss = sum(F.cross_entropy(logits[t].float(), targets[t],
                                   ignore_index=labels.IGNORE_INDEX) for t in labels.TASKS)
        loss.backward()
        optimizer.step()
        return loss

    memory.reset()
    times = time_calls(step, steps, warmup, device, desc=desc)
    stats = LatencyStats.of(times)
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    return {'batch': batch, 'step': stats.to_dict(),
            'samples_per_s': round(batch * 1000.0 / stats.median_ms, 2),
            'memory': memory.read()}


def bench_costs_and_training(cfg: BenchConfig, backbone: str, device: torch.device,
                             entry: dict) -> dict:
    """Parameters and FLOPs (zero-shot and every method) and training steps, into `entry`."""
    from soft_biometrics_ros.device import precision_name, resolve_precision
    from soft_biometrics_ros.models.factory import create_classifier
    from soft_biometrics_ros.models.multitask import build_multitask_model

    costs = 'costs' in cfg.sections
    if costs:
        logger.info('[%s] zero-shot model: parameters and FLOPs', backbone)
        zero_shot = create_classifier(checkpoint=None, backbone=backbone,
                                      pretrained=cfg.pretrained, device=str(device),
                                      precision='fp32')
        counts = zero_shot.parameter_counts
        entry['params'] = {'clip_total': counts.total, 'vision_tower': counts.vision,
                           'text_tower': counts.text}
        flops = model_flops_per_face(zero_shot, device)
        entry['flop_counting'] = flops.counting
        entry['zero_shot'] = {'params_loaded': parameter_counts(zero_shot)['total'],
                              'flops_per_face': flops.to_dict()}
        del zero_shot
        release_memory(device)

    entry['methods'] = {}
    train_here = 'train' in cfg.sections and (
        not cfg.train_backbones or backbone in cfg.train_backbones)
    for method in cfg.methods:
        if not (costs or train_here):
            continue
        logger.info('[%s] method %s:%s%s', backbone, method,
                    ' parameters, FLOPs' if costs else '', ' training step' if train_here else '')
        model = build_multitask_model(backbone, pretrained=cfg.pretrained, method=method,
                                      device=device)
        info: Dict[str, Any] = {}
        if costs:
            summary = model.parameter_summary()
            info['params'] = {**summary, 'trainable_percent': round(
                100.0 * summary['trainable'] / max(1, summary['total']), 3)}
            info['flops_per_face'] = model_flops_per_face(model, device).to_dict()
        if train_here:
            info['train'] = {}
            for precision in cfg.precisions:
                dtype = resolve_precision(precision, device)
                key = precision_name(dtype)
                if key in info['train'] or dtype == torch.qint8:
                    continue  # fp16/bf16 fall back to fp32 off CUDA; int8 is inference only
                info['train'][key] = bench_training_step(
                    model, method, cfg.train_batch, cfg.train_steps, cfg.train_warmup,
                    device, dtype, desc=f'train {method} {key}')
        if model.merge_adapters() and costs:
            # What a deployed (exported) model runs: adapters folded into the weights.
            info['flops_per_face_merged'] = model_flops_per_face(model, device).to_dict()
        entry['methods'][method] = info
        del model
        release_memory(device)
    return entry
