"""Tests of training.compare: FLOP counting and the study table written by `compare`."""

import csv
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from training_helpers import IMAGE_SIZE, tiny_config, trained_run

from soft_biometrics_ros.models.multitask import build_multitask_model
from training import compare

PNG = b'\x89PNG\r\n\x1a\n'


class Attention(nn.Module):
    """Only scaled_dot_product_attention: what FlopCounterMode misses on the CPU."""

    def forward(self, x):
        return F.scaled_dot_product_attention(x, x, x)


def test_attention_flops_are_counted():
    batch, heads, tokens, dim = 2, 3, 17, 8
    flops, notes = compare.count_flops(Attention(), torch.randn(batch, heads, tokens, dim))
    # Q K^T and attention x V: two matmuls of tokens x tokens x dim per head, 2 FLOPs a MAC.
    assert flops == 2 * 2 * batch * heads * tokens * tokens * dim
    if not torch.cuda.is_available():
        assert notes and 'added analytically' in notes[0]


def test_pe_core_flops_are_linears_plus_attention():
    model = build_multitask_model(image_size=IMAGE_SIZE).eval()
    flops, _ = compare.count_flops(model, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    width, depth, mlp, tokens = 192, 12, 768, (IMAGE_SIZE // 16) ** 2 + 1
    blocks = depth * 2 * tokens * (width * 3 * width + width * width + 2 * width * mlp)
    attention = depth * 2 * 2 * tokens * tokens * width
    patches = 2 * (tokens - 1) * 3 * 16 * 16 * width
    # Attention pooling: one latent query over all tokens, then its MLP and projections.
    pool = 2 * (width * width + tokens * 2 * width * width + width * width
                + 2 * width * mlp) + 2 * 2 * tokens * width
    heads = 2 * 3 * 512 * 512 + 2 * 512 * (9 + 2 + 7)
    projection = 2 * width * 512
    assert flops == blocks + attention + patches + pool + heads + projection


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """Session-wide folder of the tiny data and cached runs."""
    return tmp_path_factory.getbasetemp()


def test_compare_collects_runs_trains_missing_ones_and_writes_the_table(base, tmp_path):
    # linear_probe already trained in this session (or now): compare must collect it.
    out = tmp_path / 'study'
    collected = trained_run(base, 'linear_probe')
    out.mkdir(parents=True)
    shutil.copytree(collected, out / 'linear_probe')
    manifest = out / 'linear_probe' / 'checkpoints' / 'best' / 'manifest.json'
    stamp = manifest.stat().st_mtime_ns
    cfg = tiny_config(base, out, extra=['compare.methods=[linear_probe, lora]',
                                        'eval.max_samples=6'])
    result = compare.run(cfg, latency_batch=2, latency_repeats=2)
    assert manifest.stat().st_mtime_ns == stamp  # collected, not retrained
    assert (out / 'lora' / 'checkpoints' / 'best' / 'manifest.json').is_file()
    assert [r['method'] for r in result['rows']] == ['zero_shot', 'linear_probe', 'lora']
    with (out / 'compare.csv').open() as handle:
        rows = {r['method']: r for r in csv.DictReader(handle)}
    assert set(rows) == {'zero_shot', 'linear_probe', 'lora'}
    summary = json.loads((out / 'lora' / 'train_summary.json').read_text())
    lora = rows['lora']
    assert int(lora['trainable_params']) == summary['parameters']['trainable']
    assert float(lora['trainable_percent']) == pytest.approx(
        100 * summary['parameters']['trainable'] / summary['parameters']['total'])
    assert float(rows['zero_shot']['trainable_percent']) == 0.0
    for row in rows.values():
        for key in ('age_accuracy', 'gender_accuracy', 'emotion_accuracy', 'mean_macro_f1'):
            assert 0.0 <= float(row[key]) <= 1.0
        assert float(row['gflops_per_face']) > 0 and float(row['latency_ms_per_face']) > 0
    # The deployable (merged) LoRA costs what the linear probe costs: same architecture.
    assert float(lora['gflops_per_face']) == pytest.approx(
        float(rows['linear_probe']['gflops_per_face']))
    text = (out / 'compare.md').read_text()
    assert '| method | age acc |' in text and '| lora |' in text and '| zero_shot |' in text
    assert (out / 'compare.png').read_bytes()[:8] == PNG
    assert (out / 'lora' / 'eval' / 'metrics.json').is_file()
    assert (out / 'zero_shot' / 'metrics.json').is_file()


def test_method_config_takes_tuned_settings_from_the_methods_own_file(repo_root):
    from training.config import load_config
    cfg = load_config(repo_root / 'config' / 'train' / 'compare.yaml')
    partial = compare.method_config(cfg, 'partial')
    own = load_config(repo_root / 'config' / 'train' / 'partial.yaml')
    assert partial.train.lr == own.train.lr and partial.method.options == own.method.options
    assert partial.output_dir.endswith('compare/partial')
    assert partial.train.batch_size == cfg.train.batch_size  # the budget is the study's
