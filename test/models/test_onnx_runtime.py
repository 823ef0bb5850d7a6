"""The classifier in ONNX Runtime: same answers as torch for every method and zero-shot; cache.

Real PE-Core-T architectures (random weights, 64-pixel inputs for the trained methods),
real checkpoints on disk, real torch.onnx exports and real onnxruntime sessions. One
export per method (module-scoped); the cache tests reuse the LoRA checkpoint.
"""

import copy
import gc
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import REPO_ROOT
from soft_biometrics_ros import labels
from soft_biometrics_ros.models import onnx_runtime
from soft_biometrics_ros.models.adapters import apply_method
from soft_biometrics_ros.models.checkpoint import save_checkpoint
from soft_biometrics_ros.models.factory import ModelConfig, create_classifier
from soft_biometrics_ros.models.multitask import build_multitask_model
from soft_biometrics_ros.models.onnx_runtime import (OnnxClassifier, OnnxRuntimeUnavailable,
                                                     resolve_runtime)
from soft_biometrics_ros.settings import SettingError

NAME = 'PE-Core-T-16-384'
SIZE = 64
METHODS = ('linear_probe', 'partial', 'lora', 'dora', 'loraplus', 'mtlora')
TOLERANCE = 1e-4  # the bound on probabilities


@pytest.fixture(scope='module')
def base_model(tmp_path_factory):
    """A multitask model on a local random PE-Core-T weights file (outputs spread per image)."""
    torch.manual_seed(0)
    model = build_multitask_model(NAME, 'none', image_size=SIZE)
    head = model.visual.trunk.head
    with torch.no_grad():
        head.weight.normal_(0.0, head.in_features ** -0.5)
    path = tmp_path_factory.mktemp('weights') / 'pe_core_t_vision.safetensors'
    save_file({k: v.contiguous() for k, v in model.visual.state_dict().items()}, str(path))
    torch.manual_seed(1)
    return build_multitask_model(NAME, str(path), image_size=SIZE).eval()


@pytest.fixture(scope='module')
def images():
    """A fixed batch of 3 images (3, 3, SIZE, SIZE) in the model's input range."""
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)


def trained(base_model, method, seed=4):
    """A deep copy adapted by `method` whose trainable tensors moved, as after training."""
    model = copy.deepcopy(base_model)
    apply_method(model, method)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def checkpoint_of(model, folder: Path) -> Path:
    """Save `model` as a self-contained checkpoint (no weights file needed to load it)."""
    return save_checkpoint(model, folder, include_backbone=True)


def both_runtimes(checkpoint: Path):
    """Return (torch classifier, ONNX Runtime classifier) of the same checkpoint."""
    kwargs = dict(checkpoint=str(checkpoint), pretrained='none', device='cpu')
    return (create_classifier(**kwargs, runtime='torch'),
            create_classifier(**kwargs, runtime='onnxruntime'))


def max_difference(first, second, images):
    a, b = first.predict_proba(images), second.predict_proba(images)
    return {task: float((a[task] - b[task]).abs().max()) for task in labels.TASKS}


def graph_files(checkpoint: Path):
    return sorted((checkpoint / onnx_runtime.GRAPH_FOLDER).glob('*.onnx'))


@pytest.fixture(scope='module', params=METHODS)
def method_pair(request, base_model, tmp_path_factory):
    """(method, torch classifier, ONNX Runtime classifier, checkpoint) of each method."""
    folder = tmp_path_factory.mktemp(request.param) / 'ckpt'
    checkpoint = checkpoint_of(trained(base_model, request.param), folder)
    torch_classifier, onnx_classifier = both_runtimes(checkpoint)
    return request.param, torch_classifier, onnx_classifier, checkpoint


def test_every_method_gives_the_same_probabilities_in_onnxruntime(method_pair, images):
    method, torch_classifier, onnx_classifier, checkpoint = method_pair
    assert isinstance(onnx_classifier, OnnxClassifier) and onnx_classifier.runtime == \
        'onnxruntime' and torch_classifier.runtime == 'torch'
    assert onnx_classifier.method_name == method == torch_classifier.method_name
    assert onnx_classifier.input_size == SIZE and not onnx_classifier.untrained
    differences = max_difference(torch_classifier, onnx_classifier, images)
    assert max(differences.values()) <= TOLERANCE, (method, differences)
    # the answers are not trivially equal: the images get different probabilities
    torch_out = torch_classifier.predict_proba(images)
    assert float((torch_out['emotion'][0] - torch_out['emotion'][1]).abs().max()) > 1e-3
    # batch axis is dynamic: one image and a batch of 5 run on the same graph
    single = onnx_classifier.predict_proba(images[:1])
    assert all(single[t].shape == (1, labels.NUM_CLASSES[t]) for t in labels.TASKS)
    five = torch.cat([images, images[:2]])
    assert max(max_difference(torch_classifier, onnx_classifier, five).values()) <= TOLERANCE
    # the graph is cached in the checkpoint folder, with its record
    [graph] = graph_files(checkpoint)
    assert onnx_classifier.graph_path == graph
    record = json.loads(graph.with_suffix('.json').read_text())
    assert record['outputs'] == list(labels.TASKS) and record['opset'] == onnx_runtime.OPSET
    assert record['torch'] == torch.__version__
    assert record['onnxruntime'] == onnx_runtime.onnxruntime_version()


def test_crops_in_predict_and_log_probability_forward(method_pair):
    _, torch_classifier, onnx_classifier, _ = method_pair
    rng = np.random.default_rng(5)
    crops = [rng.integers(0, 256, (40 + 9 * i, 50, 3), dtype=np.uint8) for i in range(2)]
    a, b = torch_classifier.predict(crops), onnx_classifier.predict(crops)
    for task in labels.TASKS:
        assert np.abs(a[task] - b[task]).max() <= TOLERANCE
        assert np.allclose(b[task].sum(axis=1), 1.0, atol=1e-5)
    batch = onnx_classifier.preprocess(crops)
    logits = onnx_classifier(batch)  # torch code applies softmax to logits: same answers
    for task in labels.TASKS:
        assert torch.allclose(logits[task].softmax(-1), torch.from_numpy(b[task]), atol=1e-6)
    empty = onnx_classifier.predict_proba(batch[:0])
    assert all(empty[t].shape == (0, labels.NUM_CLASSES[t]) for t in labels.TASKS)
    with pytest.raises(ValueError, match='expected'):
        onnx_classifier.predict_proba(torch.zeros(1, 3, SIZE + 1, SIZE))


def zero_shot_weights(folder: Path) -> Path:
    """A full PE-Core-T CLIP weights file (random values) for the zero-shot classifier."""
    import open_clip
    torch.manual_seed(6)
    model = open_clip.create_model(NAME, pretrained=None)
    head = model.visual.trunk.head
    with torch.no_grad():
        head.weight.normal_(0.0, head.in_features ** -0.5)
    path = folder / 'pe_core_t_clip.safetensors'
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_zero_shot_gives_the_same_probabilities_and_is_cached(tmp_path, caplog):
    weights = zero_shot_weights(tmp_path)
    cache = tmp_path / 'cache'  # hub cache: text embeddings and the graph
    kwargs = dict(checkpoint='', backbone=NAME, pretrained=str(weights), device='cpu',
                  cache_dir=str(cache))
    torch_classifier = create_classifier(**kwargs, runtime='torch')
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        onnx_classifier = create_classifier(**kwargs, runtime='onnxruntime')
    assert 'exporting the PE-Core-T-16-384 classifier to ONNX' in caplog.text
    [graph] = sorted((cache / 'onnx').glob('zero-shot-PE-Core-T-16-384-*.onnx'))
    assert onnx_classifier.graph_path == graph
    size = torch_classifier.input_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    differences = max_difference(torch_classifier, onnx_classifier, images.clamp(-1, 1))
    assert max(differences.values()) <= TOLERANCE, differences
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        again = create_classifier(**kwargs, runtime='onnxruntime')
    assert 'ONNX graph loaded from cache' in caplog.text and 'exporting' not in caplog.text
    assert again.graph_path == graph
    # Random weights are drawn anew at every build: exported, run, never cached.
    torch_classifier.untrained = True
    random = onnx_runtime.onnx_classifier(torch_classifier, checkpoint=None, cache_dir=cache)
    assert random.untrained and random.graph_path.parent != graph.parent
    assert sorted((cache / 'onnx').glob('*.onnx')) == [graph]
    assert max(max_difference(torch_classifier, random, images).values()) <= TOLERANCE
    temporary = random.graph_path.parent
    assert temporary.is_dir()
    del random
    gc.collect()
    assert not temporary.exists()  # its temporary folder goes with it


def test_zero_shot_graphs_go_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert onnx_runtime.user_cache_dir() == tmp_path / 'xdg' / 'soft_biometrics_ros' / 'onnx'
    assert onnx_runtime.user_cache_dir(tmp_path / 'hub') == tmp_path / 'hub' / 'onnx'
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert onnx_runtime.user_cache_dir() == \
        tmp_path / 'home' / '.cache' / 'soft_biometrics_ros' / 'onnx'


@pytest.fixture(scope='module')
def lora_checkpoint(base_model, tmp_path_factory):
    """A LoRA checkpoint whose graph was exported once (tests leave it valid)."""
    checkpoint = checkpoint_of(trained(base_model, 'lora'),
                               tmp_path_factory.mktemp('lora') / 'ckpt')
    torch_classifier, _ = both_runtimes(checkpoint)
    return checkpoint, torch_classifier


def test_a_restart_loads_the_cached_graph_instead_of_exporting(lora_checkpoint, images, caplog):
    checkpoint, torch_classifier = lora_checkpoint
    [graph] = graph_files(checkpoint)
    written = graph.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        second = create_classifier(checkpoint=str(checkpoint), pretrained='none',
                                   device='cpu', runtime='onnxruntime')
    assert 'ONNX graph loaded from cache' in caplog.text
    assert 'exporting' not in caplog.text
    assert second.graph_path == graph and graph.stat().st_mtime_ns == written
    assert max(max_difference(torch_classifier, second, images).values()) <= TOLERANCE


def test_a_changed_checkpoint_never_reuses_the_stale_graph(base_model, images, tmp_path,
                                                           caplog):
    checkpoint = checkpoint_of(trained(base_model, 'lora'), tmp_path / 'lora')
    _, old = both_runtimes(checkpoint)
    [old_graph] = graph_files(checkpoint)
    aside = tmp_path / 'aside'
    aside.mkdir()
    for path in (old_graph, old_graph.with_suffix('.json')):
        (aside / path.name).write_bytes(path.read_bytes())
    # Training goes on: the checkpoint is replaced by one with other weights, and the old
    # graph is put back beside it (as a copy of the folder would keep it).
    checkpoint_of(trained(base_model, 'lora', seed=8), checkpoint)
    (checkpoint / onnx_runtime.GRAPH_FOLDER).mkdir(exist_ok=True)
    for path in aside.iterdir():
        (checkpoint / onnx_runtime.GRAPH_FOLDER / path.name).write_bytes(path.read_bytes())
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        torch_new, onnx_new = both_runtimes(checkpoint)
    assert 'exporting' in caplog.text
    [new_graph] = graph_files(checkpoint)  # the stale graph is gone
    assert new_graph != old_graph and onnx_new.graph_path == new_graph
    assert max(max_difference(torch_new, onnx_new, images).values()) <= TOLERANCE
    assert max(max_difference(old, onnx_new, images).values()) > 1e-3  # really other weights


def test_the_key_follows_weights_and_versions(base_model, monkeypatch):
    model = trained(base_model, 'linear_probe')
    key = onnx_runtime.model_key(model)
    assert onnx_runtime.model_key(model) == key
    with torch.no_grad():
        next(model.heads.parameters()).view(-1)[-1] += 1e-3  # one value, past any sample
    changed = onnx_runtime.model_key(model)
    assert changed != key
    monkeypatch.setattr(onnx_runtime, 'onnxruntime_version', lambda: '0.0.0-other')
    assert onnx_runtime.model_key(model) != changed
    monkeypatch.undo()
    monkeypatch.setattr(torch, '__version__', '0.0.0-other')
    assert onnx_runtime.model_key(model) != changed


class CountingSession:
    """A real InferenceSession, its run calls counted (the batch size of each kept)."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append(len(feeds[onnx_runtime.INPUT_NAME]))
        return self.session.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_a_large_batch_runs_in_chunks_with_the_same_answers(lora_checkpoint, images):
    checkpoint, torch_classifier = lora_checkpoint
    onnx_classifier = create_classifier(checkpoint=str(checkpoint), pretrained='none',
                                        device='cpu', runtime='onnxruntime')
    five = torch.cat([images, images[:2]])
    whole = onnx_classifier.predict_proba(five)
    assert onnx_classifier.images_per_call > len(five)  # 64-px test model: one call
    onnx_classifier.session = CountingSession(onnx_classifier.session)
    onnx_classifier.images_per_call = 2
    chunked = onnx_classifier.predict_proba(five)
    assert onnx_classifier.session.batches == [2, 2, 1]
    for task in labels.TASKS:
        assert chunked[task].shape == whole[task].shape
        assert float((chunked[task] - whole[task]).abs().max()) <= 1e-6
    assert max(max_difference(torch_classifier, onnx_classifier, five).values()) <= TOLERANCE


def test_images_per_call_keeps_one_layers_attention_scores_in_the_budget(base_model):
    heads = base_model.visual.trunk.blocks[0].attn.num_heads
    for size, tokens in ((384, 24 * 24 + 1), (SIZE, 4 * 4 + 1)):
        expected = max(1, onnx_runtime.ATTENTION_CHUNK_BYTES // (heads * tokens ** 2 * 4))
        assert onnx_runtime.images_per_call(base_model, size) == expected
    assert onnx_runtime.images_per_call(base_model, 384) == 2  # PE-Core-T: 4 MB an image
    assert onnx_runtime.images_per_call(torch.nn.Linear(3, 3), 384) is None


@pytest.mark.parametrize('qkv', ['linear', 'wrapped'])
@pytest.mark.parametrize('rotate_half', [False, True])
def test_the_exported_rope_attention_equals_timms_and_is_restored(base_model, images,
                                                                  rotate_half, qkv):
    """The export's constant-shape attention gives timm's result in every PE-Core block.

    `linear`: the per-head matmuls of a plain qkv Linear; `wrapped`: any other qkv module
    (run as it is, then permuted).
    """
    model = copy.deepcopy(base_model)
    blocks = [m for m in model.modules() if onnx_runtime._lean_attention_applies(m)]
    assert len(blocks) == len(model.visual.trunk.blocks) > 0
    for module in blocks:
        module.rotate_half = rotate_half
        if qkv == 'wrapped':
            module.qkv = torch.nn.Sequential(module.qkv)
    with torch.no_grad():
        expected = model(images)
        with onnx_runtime.lean_attention(model) as switched:
            assert switched == len(blocks)
            lean = model(images)
        restored = model(images)
    assert all('forward' not in vars(module) for module in blocks)  # timm's forward again
    for task in labels.TASKS:
        assert torch.allclose(lean[task], expected[task], atol=1e-5), task
        assert torch.equal(restored[task], expected[task])


@pytest.mark.parametrize('damage', ['truncated', 'garbage_with_matching_record', 'no_record'])
def test_a_corrupt_cached_graph_is_rebuilt_not_trusted(lora_checkpoint, images, caplog, damage):
    checkpoint, torch_classifier = lora_checkpoint
    [graph] = graph_files(checkpoint)
    record_path = graph.with_suffix('.json')
    if damage == 'truncated':
        data = graph.read_bytes()
        graph.write_bytes(data[:len(data) // 2])
    elif damage == 'garbage_with_matching_record':
        graph.write_bytes(b'not an onnx graph' * 100)  # passes the hash, fails to load
        record = json.loads(record_path.read_text())
        record['sha256'] = onnx_runtime.sha256_file(graph)
        record_path.write_text(json.dumps(record))
    else:
        record_path.unlink()
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        rebuilt = create_classifier(checkpoint=str(checkpoint), pretrained='none',
                                    device='cpu', runtime='onnxruntime')
    assert 'exporting it again' in caplog.text, caplog.text
    assert onnx_runtime.cached_graph_problem(graph, json.loads(
        record_path.read_text())['key']) is None
    assert max(max_difference(torch_classifier, rebuilt, images).values()) <= TOLERANCE


def test_runtime_choice(caplog):
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        assert resolve_runtime('auto', 'cpu') == 'onnxruntime'
        assert 'runtime auto: the classifier runs in ONNX Runtime' in caplog.text
        assert resolve_runtime('auto', 'cpu', 'int8') == 'onnxruntime'
        assert resolve_runtime('auto', 'cuda') == 'torch'
    assert resolve_runtime('torch', 'cpu') == 'torch'
    assert resolve_runtime('onnxruntime', 'cpu') == 'onnxruntime'
    with pytest.raises(ValueError, match='on the CPU'):
        resolve_runtime('onnxruntime', 'cuda')
    with pytest.raises(SettingError, match='runtime'):
        ModelConfig(runtime='tensorrt')
    assert ModelConfig(runtime='ONNXRuntime').runtime == 'onnxruntime'


def test_threads_follow_torch_and_idle_threads_do_not_spin(method_pair):
    _, _, onnx_classifier, _ = method_pair
    assert onnx_classifier.threads == torch.get_num_threads()
    options = onnx_runtime.session_options(threads=1)
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'


def test_int8_runs_onnxruntime_dynamic_quantization_cached_beside_fp32(
        lora_checkpoint, images, caplog):
    checkpoint, torch_classifier = lora_checkpoint
    [fp32_graph] = graph_files(checkpoint)
    kwargs = dict(checkpoint=str(checkpoint), pretrained='none', device='cpu',
                  runtime='onnxruntime', precision='int8')
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        int8 = create_classifier(**kwargs)
    assert 'quantizing the ONNX graph to int8' in caplog.text
    assert 'exporting the' not in caplog.text  # quantized from the cached fp32 graph
    assert int8.quantized and int8.compute_dtype == torch.qint8
    assert int8.graph_path == onnx_runtime.int8_graph_path(fp32_graph) != fp32_graph
    assert sorted(graph_files(checkpoint)) == sorted([fp32_graph, int8.graph_path])
    with open(int8.graph_path, 'rb') as handle:
        assert b'MatMulInteger' in handle.read()  # really int8 kernels
    # Close to fp32 (int8 rounding moves probabilities a little), but not identical.
    differences = max_difference(torch_classifier, int8, images)
    assert 0 < max(differences.values()) <= 0.02, differences
    fp32 = create_classifier(**{**kwargs, 'precision': 'fp32'})
    assert not fp32.quantized and fp32.graph_path == fp32_graph
    with pytest.raises(ValueError, match='runs a int8 graph and cannot run in fp32'):
        int8.set_precision('fp32')
    assert int8.set_precision('int8') == torch.qint8
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='soft_biometrics_ros'):
        again = create_classifier(**kwargs)
    assert 'ONNX graph loaded from cache' in caplog.text and 'quantizing' not in caplog.text
    assert again.graph_path == int8.graph_path


# A child Python in which `import onnxruntime` fails, as where the package is not
# installed (sys.modules[name] = None makes every import of it raise ImportError). It
# resolves runtime auto (logging to stdout), then runs soft_biometrics_predict.
BLOCKED = ("import sys, logging; sys.modules['onnxruntime'] = None\n"
           "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
           "from soft_biometrics_ros.models.onnx_runtime import resolve_runtime\n"
           "print('auto ->', resolve_runtime('auto', 'cpu'))\n"
           "sys.argv = ['soft_biometrics_predict'] + sys.argv[1:]\n"
           "from soft_biometrics_ros.tools import predict\n"
           "sys.exit(predict.main())\n")


def test_missing_onnxruntime_is_one_clear_line_and_auto_falls_back(tmp_path):
    import cv2
    image = tmp_path / 'face.png'
    cv2.imwrite(str(image), np.full((64, 64, 3), 128, np.uint8))
    result = subprocess.run(
        [sys.executable, '-c', BLOCKED, str(image), '--runtime', 'onnxruntime', '--device',
         'cpu'], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO_ROOT), os.environ.get('PYTHONPATH', '')])))
    assert 'auto -> torch' in result.stdout, result.stdout + result.stderr
    assert 'runtime auto: onnxruntime is not installed; the classifier runs in torch' in \
        result.stdout
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('soft_biometrics_predict: error: runtime onnxruntime: the '
                               'onnxruntime package is not installed')
    assert 'runtime: torch' in lines[0] and 'Traceback' not in result.stderr
    assert issubclass(OnnxRuntimeUnavailable, ValueError)  # the CLIs' bad-option path


def test_predict_cli_runtime_onnxruntime_answers_as_torch(lora_checkpoint, tmp_path, capsys):
    import cv2

    from soft_biometrics_ros.sample_data import astronaut_bgr
    from soft_biometrics_ros.tools import predict
    checkpoint, _ = lora_checkpoint
    image = tmp_path / 'astronaut.png'
    cv2.imwrite(str(image), astronaut_bgr())
    answers = {}
    for runtime in ('torch', 'onnxruntime'):
        assert predict.main([str(image), '--checkpoint', str(checkpoint), '--device', 'cpu',
                             '--runtime', runtime, '--json', '--no-progress']) == 0
        [line] = capsys.readouterr().out.splitlines()
        answers[runtime] = json.loads(line)['faces']
    assert len(answers['torch']) == len(answers['onnxruntime']) >= 1
    for a, b in zip(answers['torch'], answers['onnxruntime']):
        for task in labels.TASKS:
            for name, p in a[task]['probabilities'].items():  # rounded to 4 decimals
                assert abs(p - b[task]['probabilities'][name]) <= 1e-4 + 1e-9, (task, name)
