"""scripts/gpu_check.sh and scripts/gpu_wheels.sh: the plumbing, checked on the CPU.

The GPU check itself needs a CUDA machine; GPU_CHECK_DEVICE=cpu runs the same script end
to end here (CUDA tests collected and skipped, the gpu suite's benchmark on the CPU with
small options), so the command a GPU session runs once cannot rot unnoticed.
"""

import json
import os
import re
import subprocess

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / 'scripts' / 'gpu_check.sh'


def test_gpu_check_runs_end_to_end_in_cpu_plumbing_mode(tmp_path):
    out = tmp_path / 'gpu_check'
    env = dict(os.environ, GPU_CHECK_DEVICE='cpu', GPU_CHECK_OUT=str(out),
               GPU_CHECK_TEST_S='300', GPU_CHECK_BUDGET_S='560')
    proc = subprocess.run(
        ['bash', str(SCRIPT), '--backbone', 'T', '--method', 'linear_probe',
         '--precision', 'fp32', '--faces', '2', '--frame', '320x240', '--iterations', '2',
         '--warmup', '0', '--batch-sizes', '1,2', '--train-backbone', 'T',
         '--train-batch', '2', '--train-steps', '1', '--no-node'],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = f'stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-4000:]}'
    assert proc.returncode == 0, report
    assert 'PLUMBING CHECK ON THE CPU' in proc.stderr, report
    # The CUDA tests were collected and, without CUDA, skipped (not silently absent).
    status = re.search(r'CUDA tests: (.*)', proc.stdout)
    assert status and 'skipped' in status.group(1) and 'failed' not in status.group(1), report
    assert (out / 'cuda_tests.xml').is_file()
    results = json.loads((out / 'bench_gpu.json').read_text())
    assert results['complete'] is True and results['config']['suite'] == 'gpu'
    run = results['runs'][0]
    assert run['backbone'] == 'PE-Core-T-16-384'
    assert run['inference']['fp32']['fps'] > 0
    assert run['methods']['linear_probe']['train']['fp32']['samples_per_s'] > 0
    # The one short table: a row for the backbone and precision, frames per second.
    table = proc.stdout[proc.stdout.index('gpu-check ('):]
    assert re.search(r'T-16-384\s*\|\s*fp32\s*\|\s*[0-9.]+', table), table


def test_gpu_wheels_takes_every_version_from_the_pin_files():
    script = (REPO_ROOT / 'scripts' / 'gpu_wheels.sh').read_text()
    packages = re.search(r'PACKAGES=\(([^)]*)\)', script).group(1).split()
    pins = ''.join((REPO_ROOT / 'requirements' / name).read_text()
                   for name in ('runtime.txt', 'pins.txt', 'nodeps.txt'))
    for package in packages:
        assert re.search(rf'^{re.escape(package)}==\S+', pins, re.M | re.I), \
            f'{package} is fetched for the GPU check but not pinned in requirements/'
    # What the benchmark and the CUDA tests import must be fetched or on the GPU image.
    for needed in ('open_clip_torch', 'timm', 'peft', 'facenet-pytorch'):
        assert needed in packages
