"""Two-process DistributedDataParallel training with the gloo backend on the CPU (torchrun)."""

import json
import os
import subprocess
import sys

from training_helpers import tiny_overrides


def test_two_process_gloo_run_completes_and_ranks_agree(tmp_path_factory, tmp_path, repo_root):
    base = tmp_path_factory.getbasetemp()
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               '--nproc_per_node=2', '-m', 'training', 'train', '--config',
               str(repo_root / 'config' / 'train' / 'tiny_cpu.yaml'),
               *tiny_overrides(base, tmp_path, 'lora', ['train.max_steps=4',
                                                        'loss.strategy=uncertainty',
                                                        'train.eval_every=2'])]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(repo_root)}
    result = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    summary = json.loads((tmp_path / 'train_summary.json').read_text())
    assert summary['world_size'] == 2 and summary['step'] == 4
    # Each step: batch 8 on each of the two ranks.
    assert summary['history'][-1]['step'] == 4
    checksums = summary['replica_checksums']
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert (tmp_path / 'checkpoints' / 'last' / 'rng_rank1.pt').is_file()
    assert (tmp_path / 'checkpoints' / 'best' / 'manifest.json').is_file()
    # Only rank 0 writes logs: one row per step.
    rows = (tmp_path / 'train_log.csv').read_text().splitlines()
    assert [r.split(',')[0] for r in rows[1:]] == ['1', '2', '3', '4']
    assert float(rows[-1].split(',')[rows[0].split(',').index('samples_seen')]) == 4 * 8 * 2
