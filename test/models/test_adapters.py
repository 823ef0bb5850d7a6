"""Adaptation-method registry: what trains, trainable %, merging, LoRA+ groups, MTLoRA streams."""

import copy
import re

import pytest
import torch
from peft.tuners.lora import LoraLayer

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.adapters import (
    DoraAdapterConfig, LoraAdapterConfig, LoraPlusAdapterConfig, MTLoRAConfig, MTLoRALinear,
    PartialConfig, apply_method, build_optimizer, get_method, list_methods,
    merge_for_inference, method_config, trainable_parameters)
from soft_biometrics_ros.models.multitask import build_multitask_model

SIZE = 128  # small inputs keep the forward passes cheap; the architecture is PE-Core-T's
DEPTH = 12  # PE-Core-T blocks
WIDTH = 192  # PE-Core-T token width
BLOCK_SHAPES = {'attn.qkv': (192, 576), 'attn.proj': (192, 192), 'mlp.fc1': (192, 768),
                'mlp.fc2': (768, 192)}  # (in, out)
POOL_SHAPES = {'q': (192, 192), 'kv': (192, 384), 'proj': (192, 192), 'mlp.fc1': (192, 768),
               'mlp.fc2': (768, 192)}


@pytest.fixture(scope='module')
def base_model():
    """One PE-Core-T multitask model (random weights); every test adapts a deep copy."""
    torch.manual_seed(0)
    return build_multitask_model('PE-Core-T-16-384', 'none', image_size=SIZE).eval()


@pytest.fixture(scope='module')
def images():
    """A fixed input batch (2, 3, SIZE, SIZE)."""
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def adapted(base_model, method, config=None):
    """Return (a deep copy of the base model adapted by `method`, its report)."""
    model = copy.deepcopy(base_model)
    report = apply_method(model, method, config)
    return model, report


def perturb_trainable(model, scale=0.05, seed=2):
    """Give every trainable tensor a random offset, as training would (B=0 makes LoRA a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def numel(module):
    return sum(p.numel() for p in module.parameters())


def trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def check_report(model, report, expected_trainable):
    total = numel(model)
    assert report.trainable == expected_trainable
    assert report.total == total
    assert report.percent == pytest.approx(100.0 * expected_trainable / total)
    assert trainable_parameters(model) == report


def test_registry_lists_the_six_methods():
    assert list_methods() == ['linear_probe', 'partial', 'lora', 'dora', 'loraplus', 'mtlora']
    with pytest.raises(ValueError, match='known methods: linear_probe, partial'):
        get_method('full_finetune')


def test_linear_probe_trains_only_the_heads(base_model):
    model, report = adapted(base_model, 'linear_probe')
    assert all(n.startswith('heads.') for n in trainable_names(model))
    check_report(model, report, numel(base_model.heads))
    with pytest.raises(ValueError, match='already adapted'):
        apply_method(model, 'lora')


def test_partial_trains_last_blocks_norm_pooling_and_projection(base_model):
    model, report = adapted(base_model, 'partial', {'last_blocks': 4})
    trunk = base_model.visual.trunk
    pattern = re.compile(r'heads\..*|visual\.trunk\.(blocks\.(8|9|10|11)\.|norm\.|attn_pool\.'
                         r'|head\.).*')
    assert all(pattern.fullmatch(n) for n in trainable_names(model))
    expected = (numel(base_model.heads) + sum(numel(trunk.blocks[i]) for i in range(8, 12))
                + numel(trunk.norm) + numel(trunk.attn_pool) + numel(trunk.head))
    check_report(model, report, expected)


def test_lora_wraps_only_block_linears_and_counts_match(base_model):
    model, report = adapted(base_model, 'lora', {'rank': 4, 'alpha': 8})
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == DEPTH * 4
    assert all(re.fullmatch(r'visual\.trunk\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|'
                            r'mlp\.fc2)', n) for n in wrapped)
    assert not any('attn_pool' in n or 'patch_embed' in n for n in wrapped)
    assert all(n.startswith('heads.') or '.lora_' in n for n in trainable_names(model))
    lora = DEPTH * sum(4 * (i + o) for i, o in BLOCK_SHAPES.values())
    check_report(model, report, numel(base_model.heads) + lora)


def test_dora_adds_a_magnitude_per_output_feature(base_model):
    model, report = adapted(base_model, 'dora', {'rank': 4})
    names = trainable_names(model)
    assert any('lora_magnitude_vector' in n for n in names)
    lora = DEPTH * sum(4 * (i + o) + o for i, o in BLOCK_SHAPES.values())
    check_report(model, report, numel(base_model.heads) + lora)


def test_loraplus_optimizer_gives_b_matrices_ratio_times_the_rate(base_model):
    model, report = adapted(base_model, 'loraplus', {'rank': 4, 'loraplus_lr_ratio': 8})
    check_report(model, report, numel(base_model.heads)
                 + DEPTH * sum(4 * (i + o) for i, o in BLOCK_SHAPES.values()))
    optimizer = build_optimizer(model, torch.optim.AdamW, lr=1e-3, weight_decay=0.01)
    rate = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in rate
        elif '.lora_B.' in name:
            assert rate[id(param)] == pytest.approx(8e-3)
        else:  # lora_A and the heads
            assert rate[id(param)] == pytest.approx(1e-3)
    assert len(rate) == len(trainable_names(model))


def test_default_optimizer_holds_exactly_the_trainable_parameters(base_model):
    model, _ = adapted(base_model, 'partial')
    optimizer = build_optimizer(model, lr=1e-4)
    held = {id(p) for g in optimizer.param_groups for p in g['params']}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_mtlora_counts_and_trainable_parameters(base_model):
    config = MTLoRAConfig(shared_rank=4, task_rank=2, k_last_blocks=4)
    model, report = adapted(base_model, 'mtlora', config)
    tasks = len(labels.TASKS)
    shared = DEPTH * sum(4 * (i + o) for i, o in BLOCK_SHAPES.values())
    task = 4 * tasks * sum(2 * (i + o) for i, o in BLOCK_SHAPES.values())
    pool = tasks * sum(2 * (i + o) for i, o in POOL_SHAPES.values())
    check_report(model, report, numel(base_model.heads) + shared + task + pool)
    assert all(n.startswith('heads.') or '_lora_' in n for n in trainable_names(model))
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, MTLoRALinear)}
    for name, module in wrappers.items():
        block = re.search(r'blocks\.(\d+)\.', name)
        if block and int(block.group(1)) < DEPTH - 4:
            assert module.tasks == () and module.has_shared
        else:
            assert module.tasks == labels.TASKS


@pytest.mark.parametrize('method', ['lora', 'dora', 'loraplus', 'mtlora'])
def test_merged_model_matches_the_unmerged_one(base_model, images, method):
    model, _ = adapted(base_model, method)
    perturb_trainable(model)
    with torch.no_grad():
        before = model(images)
        plain = base_model(images)
    changed = merge_for_inference(model)
    assert changed and all(n in model.tuned_parameter_names for n in changed)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    with torch.no_grad():
        after = model(images)
    for task in labels.TASKS:
        assert torch.allclose(before[task], after[task], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(before[task], plain[task], atol=1e-3)  # adapters acted
    assert merge_for_inference(model) == []  # merging twice is a no-op


def test_mtlora_gives_each_task_its_own_feature_stream(base_model, images):
    model, _ = adapted(base_model, 'mtlora')
    with torch.no_grad():
        fresh = model.features(images)  # task B matrices start at zero: streams agree
    assert set(fresh) == set(labels.TASKS)
    assert torch.allclose(fresh['age'], fresh['gender']) and fresh['age'].shape == (2, 512)
    perturb_trainable(model)
    with torch.no_grad():
        features = model.features(images)
    assert not torch.allclose(features['age'], features['gender'], atol=1e-4)
    assert not torch.allclose(features['gender'], features['emotion'], atol=1e-4)
    merge_for_inference(model)  # only the shared part merges: streams stay apart
    with torch.no_grad():
        merged = model.features(images)
    for task in labels.TASKS:
        assert torch.allclose(merged[task], features[task], atol=1e-4, rtol=1e-4)


def test_mtlora_task_modules_learn_only_from_their_own_task(base_model, images):
    model, _ = adapted(base_model, 'mtlora')
    perturb_trainable(model)
    model.train()
    logits = model(images)
    loss = torch.nn.functional.cross_entropy(logits['age'], torch.tensor([1, 5]))
    loss.backward()
    task_grads = {task: 0.0 for task in labels.TASKS}
    shared_grad = 0.0
    for name, param in model.named_parameters():
        if '.task_lora_' in name:
            task = name.rsplit('.', 1)[1]
            task_grads[task] += 0.0 if param.grad is None else param.grad.abs().sum().item()
        elif '.shared_lora_' in name and param.grad is not None:
            shared_grad += param.grad.abs().sum().item()
    assert task_grads['age'] > 0
    assert task_grads['gender'] == 0 and task_grads['emotion'] == 0
    assert shared_grad > 0
    for name, param in model.heads.named_parameters():
        has_grad = param.grad is not None and param.grad.abs().sum() > 0
        assert has_grad == name.startswith('age.')


@pytest.mark.parametrize('method', ['linear_probe', 'partial', 'lora', 'dora', 'loraplus'])
def test_gradients_reach_exactly_the_trainable_parameters(base_model, images, method):
    model, _ = adapted(base_model, method)
    perturb_trainable(model)
    model.train()
    logits = model(images)
    sum(v.square().mean() for v in logits.values()).backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


@pytest.mark.parametrize('build, message', [
    (lambda: LoraAdapterConfig(rank=0), 'lora.rank'),
    (lambda: LoraAdapterConfig(targets=('attn.qkv', 'attn_pool.q')), 'lora.targets'),
    (lambda: DoraAdapterConfig(dropout=1.5), 'dora.dropout'),
    (lambda: LoraPlusAdapterConfig(loraplus_lr_ratio=0.5), 'loraplus.loraplus_lr_ratio'),
    (lambda: MTLoRAConfig(k_last_blocks=0), 'mtlora.k_last_blocks'),
    (lambda: MTLoRAConfig(alpha=-1), 'mtlora.alpha'),
    (lambda: PartialConfig(last_blocks=-1), 'partial.last_blocks'),
    (lambda: method_config('lora', {'rnak': 4}), 'rnak'),
])
def test_configs_name_the_bad_field(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_configs_too_deep_for_the_backbone_fail_at_apply(base_model):
    with pytest.raises(ValueError, match='partial.last_blocks is 13 but PE-Core-T-16-384 has '
                                         'only 12 blocks'):
        adapted(base_model, 'partial', {'last_blocks': 13})
    with pytest.raises(ValueError, match='mtlora.k_last_blocks'):
        adapted(base_model, 'mtlora', {'k_last_blocks': 20})
