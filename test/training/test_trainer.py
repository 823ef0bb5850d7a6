"""Tests of training.trainer: what each method trains, that training learns, checkpoints, resume.

PE-Core-T with random weights at 64 px on the CPU, on the tiny generated data sets
(test/datagen.py paints each label into the image, so there is something to learn).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from training_helpers import IMAGE_SIZE, METHODS, tiny_config, tiny_data, tiny_overrides

from soft_biometrics_ros import labels
from soft_biometrics_ros.models.adapters import trainable_parameters
from soft_biometrics_ros.models.factory import create_classifier
from soft_biometrics_ros.models.multitask import build_multitask_model
from training import trainer as trainer_module
from training.config import ConfigError
from training.losses import LossConfig, MultitaskLoss

# PE-Core-T-16-384 (timm vit_pe_core_tiny_patch16_384): width, depth, MLP width, embedding.
WIDTH, DEPTH, MLP, EMBED = 192, 12, 768, 512
HEAD_HIDDEN = 512  # soft_biometrics_ros.models.heads.HeadConfig default
# (in, out) of the four block linears LoRA-style methods adapt, and of the pooling's.
BLOCK_LINEARS = [(WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, MLP), (MLP, WIDTH)]
POOL_LINEARS = [(WIDTH, WIDTH), (WIDTH, 2 * WIDTH), (WIDTH, WIDTH), (WIDTH, MLP), (MLP, WIDTH)]


def linear(n_in, n_out):
    """Parameters of nn.Linear(n_in, n_out) with bias."""
    return n_in * n_out + n_out


def heads_count():
    """Parameters of the three task heads."""
    return sum(linear(EMBED, HEAD_HIDDEN) + linear(HEAD_HIDDEN, c)
               for c in labels.NUM_CLASSES.values())


def block_count():
    """Parameters of one transformer block (two LayerNorms, attention, MLP)."""
    return 4 * WIDTH + linear(WIDTH, 3 * WIDTH) + linear(WIDTH, WIDTH) + linear(WIDTH, MLP) \
        + linear(MLP, WIDTH)


def expected_trainable(method):
    """Count each method's trainable parameters from its definition (DESIGN step 3)."""
    if method == 'linear_probe':
        return heads_count()
    if method == 'partial':  # last 4 blocks, final norm, attention pooling, projection
        pool = WIDTH + sum(linear(i, o) for i, o in POOL_LINEARS) + 2 * WIDTH
        return heads_count() + 4 * block_count() + 2 * WIDTH + pool + linear(WIDTH, EMBED)
    rank = 8  # LoRA default rank
    lora = DEPTH * sum(rank * (i + o) for i, o in BLOCK_LINEARS)
    if method in ('lora', 'loraplus'):
        return heads_count() + lora
    if method == 'dora':  # plus one magnitude per output feature of every adapted linear
        return heads_count() + lora + DEPTH * sum(o for _, o in BLOCK_LINEARS)
    if method == 'mtlora':  # shared rank 8 everywhere, task rank 4 x 3 tasks in 4 blocks + pool
        shared = DEPTH * sum(8 * (i + o) for i, o in BLOCK_LINEARS)
        tasks = 3 * (4 * sum(4 * (i + o) for i, o in BLOCK_LINEARS)
                     + sum(4 * (i + o) for i, o in POOL_LINEARS))
        return heads_count() + shared + tasks
    raise KeyError(method)


def is_intended(method, name):
    """Whether parameter `name` is one `method` trains, from the names alone."""
    if name.startswith('heads.'):
        return True
    if method == 'linear_probe':
        return False
    if method == 'partial':
        last = tuple(f'visual.trunk.blocks.{i}.' for i in range(DEPTH - 4, DEPTH))
        return name.startswith(last + ('visual.trunk.norm.', 'visual.trunk.attn_pool.',
                                       'visual.trunk.head.'))
    if method in ('lora', 'loraplus', 'dora'):
        adapted = any(f'.{t}.' in name for t in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'))
        kinds = ('lora_A', 'lora_B') + (('lora_magnitude_vector',) if method == 'dora' else ())
        return adapted and 'trunk.blocks.' in name and any(k in name for k in kinds)
    if method == 'mtlora':
        return 'shared_lora_' in name or 'task_lora_' in name
    raise KeyError(method)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """Session-wide folder of the tiny data and cached runs."""
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope='module')
def probe_batch(base):
    """A fixed batch of 12 labelled tiny training images (inputs, targets)."""
    from training.datasets import build_datasets
    cfg = tiny_config(base, base / 'unused')
    train = build_datasets(cfg, progress=False).train
    items = [train[i] for i in range(0, len(train), max(1, len(train) // 12))][:12]
    images = torch.stack([item['image'] for item in items])
    targets = {t: torch.stack([item['targets'][t] for item in items]) for t in labels.TASKS}
    return images, targets


@pytest.mark.parametrize('method', METHODS)
def test_method_trains_exactly_its_parameters(method):
    torch.manual_seed(0)
    model = build_multitask_model(method=method, image_size=IMAGE_SIZE)
    assert model.visual.trunk.blocks[0].mlp.fc1.out_features == MLP
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    intended = {n for n, _ in model.named_parameters() if is_intended(method, n)}
    assert names == intended
    # The trainable share, counted from the method's definition.
    total = sum(p.numel() for p in model.parameters())
    report = trainer_module.trainable_parameter_report(model)
    assert report['trainable'] == expected_trainable(method)
    assert report['trainable_percent'] == pytest.approx(100 * expected_trainable(method) / total)
    assert trainable_parameters(model).percent == pytest.approx(report['trainable_percent'])
    # One backward pass: gradients reach exactly the trainable parameters.
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    targets = {t: torch.tensor([0, 1]) for t in labels.TASKS}
    MultitaskLoss(LossConfig())(model(images), targets).total.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in intended), name
    backbone_grad = sum(float(p.grad.abs().sum()) for n, p in model.named_parameters()
                        if p.grad is not None and not n.startswith('heads.'))
    assert (backbone_grad > 0) == (method != 'linear_probe')


def fixed_batch_loss(model, batch):
    """Mean masked cross-entropy over the tasks on a fixed batch, eval mode."""
    images, targets = batch
    model.eval()
    with torch.no_grad():
        losses, counts = MultitaskLoss(LossConfig()).task_losses(model(images), targets)
    return sum(float(v) for t, v in losses.items() if counts[t]) / sum(
        1 for c in counts.values() if c)


# Learning rates at which 6 AdamW steps learn the tiny task without diverging (full blocks
# and LoRA+'s 16x B rate need less than heads alone).
LEARNING_RATES = {'linear_probe': 0.01, 'partial': 0.001, 'lora': 0.003, 'dora': 0.003,
                  'loraplus': 0.001, 'mtlora': 0.003}


@pytest.mark.parametrize('method', METHODS)
def test_short_run_learns_and_its_checkpoint_predicts_the_same(method, base, probe_batch,
                                                               tmp_path):
    cfg = tiny_config(base, tmp_path / method, method,
                      ['train.max_steps=6', 'loss.strategy=fixed',
                       f'train.lr={LEARNING_RATES[method]}'])
    run = trainer_module.Trainer(cfg, progress_bar=False)
    before = fixed_batch_loss(run.model, probe_batch)
    summary = run.fit()
    after = fixed_batch_loss(run.model, probe_batch)
    assert summary['step'] == 6 and not summary['interrupted']
    assert after < 0.9 * before, (before, after)
    # The last checkpoint, loaded as the node loads it, predicts what the model predicts.
    images = probe_batch[0]
    classifier = create_classifier(checkpoint=str(tmp_path / method / 'checkpoints' / 'last'),
                                   pretrained=None, device='cpu')
    expected = run.model.predict_proba(images)
    got = classifier.predict_proba(images)
    for task in labels.TASKS:
        torch.testing.assert_close(got[task], expected[task], atol=1e-5, rtol=1e-4)
    assert classifier.input_size == IMAGE_SIZE
    assert (tmp_path / method / 'checkpoints' / 'best' / 'manifest.json').is_file()


def test_logs_hold_per_task_losses_and_weights(base, tmp_path):
    # 64 draws per epoch, 2 batches of 8 per step: 4 steps per epoch, validation at 2 and 4.
    cfg = tiny_config(base, tmp_path, 'lora', ['loss.strategy=uncertainty', 'train.max_steps=4',
                                               'train.eval_every=2', 'train.grad_accum=2',
                                               'train.samples_per_epoch=64'])
    summary = trainer_module.run(cfg)
    rows = (tmp_path / 'train_log.csv').read_text().splitlines()
    header = rows[0].split(',')
    for task in labels.TASKS:
        assert f'loss_{task}' in header and f'weight_{task}' in header
    assert len(rows) == 1 + 4
    first, last = (dict(zip(header, r.split(','))) for r in (rows[1], rows[-1]))
    # Uncertainty weighting's learned weights move during training.
    assert first['weight_gender'] != last['weight_gender']
    val_rows = (tmp_path / 'val_log.csv').read_text().splitlines()
    assert [r.split(',')[0] for r in val_rows[1:]] == ['2', '4']
    assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
    assert summary['best_step'] in (2, 4)
    saved = json.loads((tmp_path / 'train_summary.json').read_text())
    assert saved['step'] == 4 and saved['parameters']['trainable'] > 0


def trainable_state(model):
    """Copies of the trainable tensors by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_weights(a, b):
    """Every tensor of two name -> tensor dicts is identical."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


RESUME_EXTRA = ['train.max_steps=6', 'loss.strategy=uncertainty', 'train.save_every=1']


@pytest.fixture(scope='module')
def uninterrupted(base, tmp_path_factory):
    """Final trainable weights and loss weights of an uninterrupted 6-step LoRA run."""
    out = tmp_path_factory.mktemp('uninterrupted')
    run = trainer_module.Trainer(tiny_config(base, out, 'lora', RESUME_EXTRA),
                                 progress_bar=False)
    run.fit()
    return trainable_state(run.model), run.criterion.balancer.state_dict()


def test_resume_continues_from_the_saved_step_to_the_same_weights(base, tmp_path,
                                                                  uninterrupted):
    cfg = tiny_config(base, tmp_path, 'lora', RESUME_EXTRA)
    first = trainer_module.Trainer(cfg, progress_bar=False)
    summary = first.fit(stop_after_step=3)
    assert summary['interrupted'] and summary['step'] == 3
    state = json.loads((tmp_path / 'checkpoints' / 'last' / 'training_state.json').read_text())
    assert state['progress']['step'] == 3
    # 16 draws per epoch in batches of 8: step 3 is one batch into epoch 1.
    assert (state['progress']['epoch'], state['progress']['epoch_batches']) == (1, 1)
    torch.manual_seed(1234)  # the resumed run must not depend on the process's RNG
    second = trainer_module.Trainer(cfg, progress_bar=False)
    second.maybe_resume()
    assert second.progress.step == 3
    assert_same_weights(trainable_state(second.model), trainable_state(first.model))
    assert second.scheduler.last_epoch == first.scheduler.last_epoch
    summary = second.fit()
    assert summary['resumed'] and summary['step'] == 6
    weights, balancer = uninterrupted
    assert_same_weights(trainable_state(second.model), weights)
    assert_same_weights(second.criterion.balancer.state_dict(), balancer)
    # No duplicated log rows: every step once.
    steps = [int(r.split(',')[0]) for r in
             (tmp_path / 'train_log.csv').read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def wait_for_step(state_file, step, process, timeout=180):
    """Wait until the saved training state reaches `step` (the process must still run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_file.is_file():
            try:
                if json.loads(state_file.read_text())['progress']['step'] >= step:
                    return
            except (ValueError, KeyError):
                pass  # being replaced right now
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError(f'no checkpoint of step {step} within {timeout} s')


def test_killed_and_terminated_runs_resume_to_the_same_weights(base, tmp_path, uninterrupted,
                                                               repo_root):
    command = [sys.executable, '-m', 'training', 'train', '--config',
               str(repo_root / 'config' / 'train' / 'tiny_cpu.yaml'),
               *tiny_overrides(base, tmp_path, 'lora', RESUME_EXTRA)]
    env = {**os.environ, 'PYTHONPATH': str(repo_root)}
    last = tmp_path / 'checkpoints' / 'last'
    # 1. SIGKILL (no chance to save) once step 2 is saved.
    process = subprocess.Popen(command, cwd=repo_root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    wait_for_step(last / 'training_state.json', 2, process)
    process.kill()
    process.wait()
    # 2. Resume; SIGTERM (save, then exit) once step 4 is saved.
    process = subprocess.Popen(command, cwd=repo_root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    wait_for_step(last / 'training_state.json', 4, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    summary = json.loads((tmp_path / 'train_summary.json').read_text())
    if summary['step'] < 6:  # stopped by the signal, not finished before it arrived
        assert summary['interrupted'] and summary['resumed']
        # Not "finished": a non-zero status (128 + SIGTERM), so `train && export` stops.
        assert process.returncode == trainer_module.interrupted_status(signal.SIGTERM) == 143, \
            output
        assert f'interrupted at step {summary["step"]}; rerun the same command to resume' \
            in output
        assert 'finished at step' not in output
    else:
        assert process.returncode == 0, output
    # 3. Finish in this process.
    run = trainer_module.Trainer(tiny_config(base, tmp_path, 'lora', RESUME_EXTRA),
                                 progress_bar=False)
    assert run.fit()['step'] == 6
    weights, _ = uninterrupted
    assert_same_weights(trainable_state(run.model), weights)


def test_resume_refuses_a_different_method(base, tmp_path):
    tiny_data(base)
    trainer_module.run(tiny_config(base, tmp_path, 'linear_probe', ['train.max_steps=1']))
    # Its own type (a ConfigError): the command line prints it as one error line.
    with pytest.raises(trainer_module.ResumeError, match="method 'linear_probe'"):
        trainer_module.Trainer(tiny_config(base, tmp_path, 'lora', ['train.max_steps=2']),
                               progress_bar=False).fit()


def test_missing_data_roots_fail_before_the_model_is_built(base, tmp_path):
    # The weights file does not exist either: building the model first would fail on it.
    cfg = tiny_config(base, tmp_path, 'lora', [
        f'data.fairface.root={tmp_path / "no_fairface"}',
        f'model.pretrained={tmp_path / "absent.safetensors"}'])
    with pytest.raises(ConfigError, match=f'data.fairface.root: folder {tmp_path}/no_fairface '
                                          'does not exist'):
        trainer_module.Trainer(cfg, progress_bar=False)
    assert not tmp_path.joinpath('checkpoints').exists()


def test_gradnorm_and_dwa_train_end_to_end(base, tmp_path):
    for strategy in ('gradnorm', 'dwa'):
        out = tmp_path / strategy
        summary = trainer_module.run(tiny_config(base, out, 'lora', [
            f'loss.strategy={strategy}', 'train.max_steps=6']))
        assert summary['step'] == 6
        rows = (out / 'train_log.csv').read_text().splitlines()
        header = rows[0].split(',')
        weights = [[float(v) for k, v in zip(header, r.split(',')) if k.startswith('weight_')]
                   for r in rows[1:]]
        assert all(sum(w) == pytest.approx(3.0, rel=1e-4) for w in weights)
        # GradNorm moves its weights every step, DWA from the third epoch on.
        assert len({tuple(np.round(w, 6)) for w in weights}) > 1, strategy
    with pytest.raises(ConfigError, match='linear_probe trains none'):
        trainer_module.Trainer(tiny_config(base, tmp_path / 'x', 'linear_probe',
                                           ['loss.strategy=gradnorm']), progress_bar=False)


def test_warmup_cosine_schedule():
    factor = trainer_module.warmup_cosine(warmup_steps=4, total_steps=14)
    values = [factor(s) for s in range(15)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert values[9] == pytest.approx(0.5)
    assert values[14] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_every_shipped_method_config_is_valid(repo_root):
    from soft_biometrics_ros.models.adapters import method_config
    from training.config import load_config
    for method in METHODS:
        cfg = load_config(repo_root / 'config' / 'train' / f'{method}.yaml')
        assert cfg.method.name == method and cfg.model.backbone == 'PE-Core-L-14-336'
        method_config(method, cfg.method.options or None)  # the adapter accepts the options
        assert cfg.train.precision == 'bf16' and cfg.train.device == 'cuda'
    compare_cfg = load_config(repo_root / 'config' / 'train' / 'compare.yaml')
    assert sorted(compare_cfg.compare.methods) == sorted(METHODS)


@pytest.mark.cuda
@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_cuda_autocast_run_trains_and_saves(base, tmp_path, precision):
    # fp16 runs through the GradScaler, GradNorm's directly written gradients included.
    cfg = tiny_config(base, tmp_path, 'lora', ['train.device=cuda', f'train.precision={precision}',
                                               'loss.strategy=gradnorm', 'train.max_steps=4'])
    run = trainer_module.Trainer(cfg, progress_bar=False)
    assert run.device.type == 'cuda'
    summary = run.fit()
    assert summary['step'] == 4 and summary['best_score'] is not None
    assert all(np.isfinite(v) for v in run.criterion.balancer.weights().values())
    classifier = create_classifier(checkpoint=str(tmp_path / 'checkpoints' / 'last'),
                                   pretrained=None, device='cuda', precision=precision)
    probs = classifier.predict_proba(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE, device='cuda'))
    assert all(torch.isfinite(p).all() for p in probs.values())


def test_images_that_fail_to_load_are_counted_in_the_summary(base, tmp_path):
    # Damaged JPEGs (a quarter + end marker: OpenCV and PIL decode them to grey) pass the
    # header check when the data is read and fail when loaded; each is replaced by the
    # next sample and counted in train_summary.json, not only in warning lines.
    import shutil

    roots = tiny_data(base)
    damaged = 0
    copies = {}
    for key, root in roots.items():
        copy = tmp_path / 'data' / key.split('.')[1]
        shutil.copytree(root, copy)
        copies[key] = str(copy)
        for index, path in enumerate(sorted(copy.rglob('*.jpg'))):
            data = path.read_bytes()
            if index % 2 == 0 and data[:2] == b'\xff\xd8' and len(data) > 400:
                path.write_bytes(data[:len(data) // 4] + b'\xff\xd9')
                damaged += 1
    assert damaged >= 4
    overrides = [o for o in tiny_overrides(base, tmp_path / 'run', 'linear_probe',
                                           ['train.max_steps=2'])
                 if not o.startswith(tuple(roots))]
    overrides += [f'{key}={value}' for key, value in copies.items()]
    from training.config import load_config
    from training_helpers import TINY_CONFIG
    summary = trainer_module.run(load_config(TINY_CONFIG, overrides))
    written = json.loads((tmp_path / 'run' / 'train_summary.json').read_text())
    assert written['image_load_failures'] == summary['image_load_failures']
    assert written['image_load_failures']['train'] >= 1
    assert set(written['image_load_failures']) == {'train', 'val'}
