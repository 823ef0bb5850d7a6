"""Tests of soft_biometrics_bench: real PE-Core-T, real MTCNN, the real node over ROS.

Speed is never asserted: the tests check that every section measures something real
(positive latencies, FLOPs, faces found as tiled in, parameter counts that agree with
an independent count) and that the JSON carries what the README table is built from.
The `cuda` tests run on a GPU machine (`make gpu-check`).
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from soft_biometrics_ros.tools import bench
from soft_biometrics_ros.tools.bench.config import SUITES, BenchConfig, parse_frame, suite_config
from soft_biometrics_ros.tools.bench.frames import synthetic_frame
from soft_biometrics_ros.tools.bench.node import node_processing_mean
from soft_biometrics_ros.tools.bench.pipeline import STAGES
from soft_biometrics_ros.tools.bench.runtimes import interleaved
from soft_biometrics_ros.tools.bench.timing import LatencyStats

T = 'PE-Core-T-16-384'
QUICK_FACES = 2
QUICK_FRAME = (320, 240)


def run_bench_cli(tmp_path, *options, timeout=420):
    """Run `python -m soft_biometrics_ros.tools.bench` and return (results JSON, stdout)."""
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, '-m', 'soft_biometrics_ros.tools.bench', *options, '--json', str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'bench failed:\n{proc.stdout}\n{proc.stderr[-4000:]}'
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    """One quick-suite run on the CPU, node section included (the expensive part, once)."""
    tmp = tmp_path_factory.mktemp('bench_quick')
    return run_bench_cli(tmp, '--suite', 'quick', '--node', '--faces', str(QUICK_FACES),
                         '--frame', 'x'.join(map(str, QUICK_FRAME)), '--iterations', '3',
                         '--runtime', 'torch,onnxruntime')


def assert_positive_stats(stats, what):
    assert stats['n'] >= 1, what
    assert 0 < stats['min_ms'] <= stats['median_ms'] <= stats['p95_ms'] <= stats['max_ms'], \
        f'{what}: {stats}'


def unique_parameter_counts(module):
    params = {id(p): p for p in module.parameters()}.values()
    return (sum(p.numel() for p in params),
            sum(p.numel() for p in params if p.requires_grad))


def test_quick_suite_json_has_every_section(quick):
    results, stdout = quick
    assert results['complete'] is True
    assert results['config']['suite'] == 'quick'
    assert results['ros']['available'] is True
    assert [run['backbone'] for run in results['runs']] == [T]
    run = results['runs'][0]
    assert set(run['methods']) == {'linear_probe', 'lora'}
    assert set(run['inference']) == {'fp32'}
    # The printed tables carry the same run.
    assert 'Inference' in stdout and 'Model cost' in stdout and 'Training step' in stdout
    assert 'T-16-384' in stdout


def test_quick_suite_latencies_and_faces(quick):
    results, _ = quick
    inference = results['runs'][0]['inference']['fp32']
    for stage in STAGES:
        assert_positive_stats(inference['stages'][stage], stage)
    assert_positive_stats(inference['pipeline'], 'pipeline')
    assert_positive_stats(inference['end_to_end'], 'end_to_end')
    assert inference['end_to_end']['median_ms'] >= inference['pipeline']['min_ms']
    assert inference['fps'] > 0 and inference['pipeline_fps'] >= inference['fps'] * 0.5
    # Every tiled face is found in every timed frame.
    assert inference['faces_found'] == {'min': QUICK_FACES, 'max': QUICK_FACES,
                                        'median': float(QUICK_FACES)}
    assert set(inference['classifier_batches']) == {'1', '4'}
    for batch in inference['classifier_batches'].values():
        assert batch['faces_per_s'] > 0
        assert_positive_stats(batch['latency'], 'classifier batch')
    assert inference['memory']['cpu_peak_rss_mib'] > 100
    assert inference['memory']['cuda_max_allocated_mib'] is None


def test_quick_suite_compares_torch_and_onnxruntime_interleaved(quick):
    results, stdout = quick
    assert results['config']['runtimes'] == ['torch', 'onnxruntime']
    found = results['runs'][0]['inference']['fp32']['runtimes']
    assert set(found['classifier']) == {'1', '4'}
    for what in [*found['classifier'].values(), found['end_to_end'], found['classify_stage']]:
        assert what['torch_ms'] > 0 and what['onnxruntime_ms'] > 0 and what['calls'] >= 2
        assert what['ratio'] == pytest.approx(what['torch_ms'] / what['onnxruntime_ms'],
                                              rel=0.02)
    assert found['export_s'] > 0 and found['load_cached_s'] > 0
    assert found['threads'] == results['environment']['torch_threads']
    assert 'Classifier runtimes' in stdout and 'export s / cached load s' in stdout
    assert all(what['calls'] == 3 for what in found['classifier'].values())  # quick: 3 pairs


def test_interleaved_keeps_its_pairs_past_the_time_cap_and_alternates():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ('torch', 'onnxruntime')}
    times = interleaved(calls, rounds=20, warmup=0, max_seconds=0.0, min_rounds=5)
    assert [len(v) for v in times.values()] == [5, 5]  # stopped at the cap, not before 5
    assert order[:4] == ['torch', 'onnxruntime', 'onnxruntime', 'torch']
    assert len(interleaved(calls, rounds=3, warmup=1, max_seconds=1e9)['torch']) == 3


def test_quick_suite_node_over_ros(quick):
    results, _ = quick
    node = results['runs'][0]['inference']['fp32']['node']
    assert node['answered'] == node['frames'] == 3 and node['lost'] == 0
    assert node['faces_answered'] == {'min': QUICK_FACES, 'max': QUICK_FACES}
    assert_positive_stats(node['publish_to_answer'], 'publish_to_answer')
    assert_positive_stats(node['pipeline_alone'], 'pipeline_alone')
    assert node['ratio_latency'] > 0
    assert node['node_processing_mean_ms'] > 0 and node['ratio_processing'] > 0
    assert node['parameters']['max_rate'] == 0.0
    assert int(node['diagnostics']['frames processed']) >= node['answered']


def test_quick_suite_parameters_match_independent_counts(quick):
    import open_clip

    from soft_biometrics_ros.models.multitask import build_multitask_model

    results, _ = quick
    run = results['runs'][0]
    clip = open_clip.create_model(T, pretrained=None)
    assert run['params']['clip_total'] == sum(p.numel() for p in clip.parameters())
    assert run['params']['vision_tower'] == sum(p.numel() for p in clip.visual.parameters())
    assert run['params']['text_tower'] == sum(p.numel() for p in clip.text.parameters())
    assert run['zero_shot']['params_loaded'] == run['params']['vision_tower']
    for method in ('linear_probe', 'lora'):
        model = build_multitask_model(T, pretrained='none', method=method)
        total, trainable = unique_parameter_counts(model)
        params = run['methods'][method]['params']
        assert (params['total'], params['trainable']) == (total, trainable), method
        assert params['total'] == params['vision'] + params['heads']
    assert run['methods']['lora']['params']['trainable'] > \
        run['methods']['linear_probe']['params']['trainable']


def test_quick_suite_flops_and_training(quick):
    results, _ = quick
    run = results['runs'][0]
    assert 'scaled_dot_product_attention' in run['flop_counting']
    zero_shot = run['zero_shot']['flops_per_face']
    assert zero_shot['gflops'] > zero_shot['attention_gflops'] > 0
    probe = run['methods']['linear_probe']
    lora = run['methods']['lora']
    # Heads add a little; unmerged LoRA adds its low-rank products; merged LoRA costs what
    # the plain backbone + heads cost.
    assert probe['flops_per_face']['gflops'] >= zero_shot['gflops'] * 0.99
    assert lora['flops_per_face']['gflops'] > probe['flops_per_face']['gflops']
    assert lora['flops_per_face_merged']['gflops'] == pytest.approx(
        probe['flops_per_face']['gflops'], rel=1e-3)
    for method in ('linear_probe', 'lora'):
        train = run['methods'][method]['train']['fp32']
        assert train['batch'] == 2 and train['samples_per_s'] > 0
        assert_positive_stats(train['step'], f'{method} training step')
        assert train['memory']['cpu_peak_rss_mib'] > 100


def test_latency_stats_summary():
    stats = LatencyStats.of([4.0, 1.0, 3.0, 2.0, 100.0])
    assert stats.median_ms == 3.0 and stats.min_ms == 1.0 and stats.max_ms == 100.0
    assert stats.p95_ms == pytest.approx(np.percentile([1, 2, 3, 4, 100], 95))
    assert stats.per_second == pytest.approx(1000 / 3)
    with pytest.raises(ValueError, match='no timings'):
        LatencyStats.of([])


def test_node_processing_mean_recovers_timed_frames():
    def diag(processed, mean):
        return {'frames processed': str(processed), 'latency total (ms)': f'mean {mean} max 9'}

    # 4 warm-up frames at 50 ms, then 6 timed frames at 20 ms: mean over 10 is 32 ms.
    assert node_processing_mean(diag(4, 50.0), diag(10, 32.0), 100) == \
        pytest.approx(20.0)
    assert node_processing_mean(diag(4, 50.0), diag(300, 20.0), 100) == 20.0
    assert node_processing_mean(diag(4, 50.0), diag(4, 50.0), 100) is None
    assert node_processing_mean(None, None, 100) is None


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match='backbones'):
        BenchConfig(backbones=('PE-Core-X-1',))
    with pytest.raises(ValueError, match="methods: unknown method 'lorax'"):
        BenchConfig(methods=('lorax',))
    with pytest.raises(ValueError, match='precisions'):
        BenchConfig(precisions=('fp8',))
    # int8 replaces the classifier's layers for good, so it is measured last.
    assert BenchConfig(precisions=('int8', 'fp32')).precisions == ('fp32', 'int8')
    with pytest.raises(ValueError, match='iterations must be >= 1'):
        BenchConfig(iterations=0)
    with pytest.raises(ValueError, match='detection_scale'):
        BenchConfig(detection_scale=2.0)
    with pytest.raises(ValueError, match='WIDTHxHEIGHT'):
        parse_frame('640by480')
    with pytest.raises(ValueError, match='suite'):
        suite_config('huge')
    cfg = suite_config('cpu', backbones=['T,S'], precisions=['fp32'], iterations=None)
    assert cfg.backbones == (T, 'PE-Core-S-16-384')
    assert cfg.iterations == SUITES['cpu']['iterations']
    assert cfg.pipeline_method == cfg.methods[0]


def test_cli_rejects_bad_options_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(['--suite', 'quick', '--method', 'nonsense'])
    assert exit_info.value.code == 2
    assert "unknown method 'nonsense'" in capsys.readouterr().err


def test_synthetic_frame_size_and_errors():
    frame = synthetic_frame(5, (1920, 1080))
    assert frame.shape == (1080, 1920, 3) and frame.dtype == np.uint8
    with pytest.raises(ValueError, match='too small'):
        synthetic_frame(30, (128, 128))


# ---------------------------------------------------------------------------------- CUDA

@pytest.fixture(scope='module')
def cuda_pipeline():
    from soft_biometrics_ros.runtime.pipeline import Pipeline, PipelineConfig
    return Pipeline(PipelineConfig(backbone=T, pretrained='none', device='cuda',
                                   precision='fp32'))


@pytest.mark.cuda
def test_cuda_pipeline_bf16_gives_valid_probabilities_matching_fp32(cuda_pipeline):
    frame = synthetic_frame(4, (1280, 720))
    cuda_pipeline.classifier.set_precision('fp32')
    fp32, _ = cuda_pipeline.process(frame)
    cuda_pipeline.classifier.set_precision('bf16')
    try:
        bf16, timings = cuda_pipeline.process(frame)
    finally:
        cuda_pipeline.classifier.set_precision('fp32')
    assert cuda_pipeline.device.type == 'cuda'
    assert len(fp32) == len(bf16) == 4
    agree = total = 0
    for a, b in zip(fp32, bf16):
        assert a.box == pytest.approx(b.box)
        for task in ('age', 'gender', 'emotion'):
            pa, pb = a.task(task).vector(task), b.task(task).vector(task)
            assert np.all(np.isfinite(pb)) and np.all(pb >= 0) and pb.sum() == \
                pytest.approx(1.0, abs=1e-3)
            assert np.abs(pa - pb).max() < 0.1, (task, pa, pb)
            agree += a.task(task).label == b.task(task).label
            total += 1
    assert agree / total >= 0.75, f'bf16 labels agree with fp32 on only {agree}/{total}'
    assert all(v > 0 for v in timings.values())


@pytest.mark.cuda
def test_cuda_bench_quick_measures_both_precisions(tmp_path):
    results, _ = run_bench_cli(tmp_path, '--suite', 'quick', '--device', 'cuda',
                               '--precision', 'fp32,bf16', '--faces', '3',
                               '--frame', '640x480', '--no-node')
    run = results['runs'][0]
    assert results['environment']['device'].startswith('cuda')
    assert set(run['inference']) == {'fp32', 'bf16'}
    for inference in run['inference'].values():
        assert inference['faces_found']['min'] == inference['faces_found']['max'] == 3
        assert inference['memory']['cuda_max_allocated_mib'] > 0
        assert inference['classifier_batches']['4']['faces_per_s'] > 0
    for method in run['methods'].values():
        assert set(method['train']) == {'fp32', 'bf16'}
        assert method['train']['bf16']['memory']['cuda_max_allocated_mib'] > 0
