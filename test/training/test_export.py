"""Tests of training.export: the deployable (merged) checkpoint predicts what training saved."""

import json

import pytest
import torch
from training_helpers import trained_run

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.checkpoint import load_checkpoint
from soft_biometrics_ros.models.factory import create_classifier
from training import cli, export


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """Session-wide folder of the tiny data and cached runs."""
    return tmp_path_factory.getbasetemp()


@pytest.mark.parametrize('method', ['lora', 'dora', 'linear_probe'])
def test_export_merges_and_predicts_the_same(base, tmp_path, repo_root, method):
    from training_helpers import tiny_overrides
    run_dir = trained_run(base, method)
    checkpoint = run_dir / 'checkpoints' / 'best'
    out = tmp_path / 'deploy'
    status = cli.main(['export', '--config', str(repo_root / 'config/train/tiny_cpu.yaml'),
                       '--checkpoint', str(checkpoint), '--output', str(out),
                       *tiny_overrides(base, tmp_path / 'unused', method)])
    assert status == 0
    report = json.loads((out / 'export_report.json').read_text())
    assert report['merged'] == (method != 'linear_probe')
    # The training checkpoint as stored (unmerged adapters; create_classifier would merge).
    trained = load_checkpoint(checkpoint)
    # Self-contained: the node loads it without the pretrained weights file.
    deployed = create_classifier(checkpoint=str(out), pretrained='none', device='cpu')
    names = [n for n, _ in deployed.named_parameters()]
    assert not any('lora_' in n for n in names)
    if method != 'linear_probe':
        assert any('lora_' in n for n, _ in trained.named_parameters())
        assert len(names) < len(list(trained.named_parameters()))
    images = torch.randn(5, 3, trained.input_size, trained.input_size).clamp(-1, 1)
    before, after = trained.predict_proba(images), deployed.predict_proba(images)
    for task in labels.TASKS:
        torch.testing.assert_close(after[task], before[task], atol=1e-5, rtol=1e-4)


def test_export_refuses_to_overwrite_its_source(base):
    checkpoint = trained_run(base, 'linear_probe') / 'checkpoints' / 'best'
    with pytest.raises(ValueError, match='is the checkpoint itself'):
        export.export_checkpoint(checkpoint, checkpoint)


def test_export_never_replaces_a_folder_that_is_not_a_checkpoint(base, tmp_path):
    checkpoint = trained_run(base, 'linear_probe') / 'checkpoints' / 'best'
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match='is not a checkpoint folder'):
        export.export_checkpoint(checkpoint, tmp_path)
    assert (tmp_path / 'notes.txt').read_text() == 'mine'


def test_export_onnx_writes_the_graph_the_node_loads(base, tmp_path, repo_root, caplog):
    import logging

    from training_helpers import tiny_overrides
    checkpoint = trained_run(base, 'lora') / 'checkpoints' / 'best'
    out = tmp_path / 'deploy'
    status = cli.main(['export', '--onnx', '--config',
                       str(repo_root / 'config/train/tiny_cpu.yaml'), '--checkpoint',
                       str(checkpoint), '--output', str(out),
                       *tiny_overrides(base, tmp_path / 'unused', 'lora')])
    assert status == 0
    report = json.loads((out / 'export_report.json').read_text())
    [graph] = (out / 'onnx').glob('classifier-*.onnx')
    assert report['onnx']['graph'] == str(graph)
    assert max(report['onnx']['max_probability_difference'].values()) <= 1e-4
    assert not list(tmp_path.glob('.deploy*'))  # the temporary folder is gone
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        deployed = create_classifier(checkpoint=str(out), device='cpu', runtime='onnxruntime')
    assert 'ONNX graph loaded from cache' in caplog.text and 'exporting' not in caplog.text
    assert deployed.graph_path == graph
    torch_model = create_classifier(checkpoint=str(out), device='cpu', runtime='torch')
    images = torch.randn(3, 3, deployed.input_size, deployed.input_size).clamp(-1, 1)
    a, b = torch_model.predict_proba(images), deployed.predict_proba(images)
    for task in labels.TASKS:
        assert float((a[task] - b[task]).abs().max()) <= 1e-4


def test_onnx_is_an_option_of_export_only(repo_root, capsys):
    with pytest.raises(SystemExit):
        cli.main(['stats', '--onnx', '--config', str(repo_root / 'config/train/tiny_cpu.yaml')])
    assert 'stats takes no --onnx' in capsys.readouterr().err
