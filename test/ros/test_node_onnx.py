"""The node with `runtime: onnxruntime` on a real ROS graph: same answers as torch, cached graph.

One node subprocess on a trained-style LoRA checkpoint (PE-Core-T, random weights, 64
pixels, stored whole): the first configure exports the graph into the checkpoint, the
node answers a photo with the probabilities the torch pipeline gives in this process,
and a configure after cleanup loads the cached graph instead of exporting again.
"""

import numpy as np
import pytest
import torch

from node_graph import bgr_msg, running_node
from soft_biometrics_ros.models.adapters import apply_method
from soft_biometrics_ros.models.checkpoint import save_checkpoint
from soft_biometrics_ros.models.multitask import build_multitask_model
from soft_biometrics_ros.runtime.pipeline import Pipeline, PipelineConfig
from soft_biometrics_ros.sample_data import astronaut_bgr

TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A LoRA checkpoint with moved adapters and a usable embedding scale."""
    torch.manual_seed(0)
    model = build_multitask_model('PE-Core-T-16-384', 'none', image_size=64)
    head = model.visual.trunk.head
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head.weight.normal_(0.0, head.in_features ** -0.5)
        apply_method(model, 'lora')
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp('ckpt') / 'lora',
                           include_backbone=True)


@pytest.fixture(scope='module')
def graph(tmp_path_factory, checkpoint):
    """The node (runtime onnxruntime, no tracking: raw answers) and a client beside it."""
    log_path = tmp_path_factory.mktemp('node') / 'node.log'
    with running_node(log_path, '-p', 'max_rate:=0.0', '-p', 'runtime:=onnxruntime',
                      '-p', f'checkpoint:={checkpoint}', '-p', 'tracking:=false',
                      timeout=300) as (client, process):
        yield client, process, log_path


def test_node_on_onnxruntime_answers_as_torch_does(graph, checkpoint):
    client, _, log_path = graph
    log = log_path.read_text()
    assert 'exporting the PE-Core-T-16-384 classifier to ONNX' in log
    assert '(onnxruntime)' in log  # the configured line names the runtime
    [graph_file] = (checkpoint / 'onnx').glob('classifier-*.onnx')
    image = astronaut_bgr()
    stamp = (2000, 1)
    client.publish(bgr_msg(image, stamp))
    answer = client.answer(stamp)
    assert answer is not None and len(answer.faces) >= 1
    pipeline = Pipeline(PipelineConfig(checkpoint=str(checkpoint), pretrained='none',
                                       device='cpu', runtime='torch'))
    expected, _ = pipeline.process(image)
    assert len(expected) == len(answer.faces)
    for face, estimate in zip(sorted(answer.faces, key=lambda f: -f.detection_confidence),
                              expected):
        for task, got in (('age', face.age.probabilities),
                          ('emotion', face.emotion.probabilities)):
            want = estimate.task(task).vector(task)
            assert np.abs(np.asarray(got) - want).max() <= TOLERANCE, task
        assert face.gender.confidence == pytest.approx(estimate.gender.confidence,
                                                       abs=TOLERANCE)
    # Reconfiguring (as after a restart) loads the cached graph: no second export.
    size = len(log)
    assert client.change_state('deactivate') is True
    assert client.change_state('cleanup') is True
    assert client.change_state('configure') is True
    assert client.change_state('activate') is True
    again = log_path.read_text()[size:]
    assert 'ONNX graph loaded from cache' in again and 'exporting' not in again
    assert [graph_file] == list((checkpoint / 'onnx').glob('classifier-*.onnx'))
    stamp = (2001, 1)
    client.publish(bgr_msg(image, stamp))
    answer = client.answer(stamp)
    assert answer is not None and len(answer.faces) == len(expected)
