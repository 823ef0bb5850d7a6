"""The results: the JSON file, the three tables on stdout, the short table of gpu-check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from soft_biometrics_ros.tools.bench.config import ZERO_SHOT, short_name


def write_json(results: dict, path) -> None:
    """Write `results` to `path` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(results, indent=2, default=str) + '\n')
    tmp.replace(path)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a Markdown (pipe) table, columns padded to their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return '| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |'

    return '\n'.join([line(cells[0]), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
                     + [line(r) for r in cells[1:]])


def _ms(stats: Optional[dict]) -> str:
    return '-' if not stats else f'{stats["median_ms"]:.1f}'


def format_tables(results: dict) -> str:
    """Render the summary printed on stdout: inference, model cost, training tables."""
    cfg = results['config']
    env = results['environment']
    width, height = cfg['frame']
    lines = [f'soft_biometrics_bench: suite {cfg["suite"]}, {env["device"]} '
             f'({env["device_name"]}, {env["cpu_count"]} CPUs, {env["torch_threads"]} torch '
             f'threads), frame {width}x{height} with {cfg["faces"]} face(s), '
             f'torch {env["torch"]}, {results.get("duration_s", "?")} s, load average '
             f'{env.get("load_average_start")} -> {env.get("load_average_end")}', '']
    rows = []
    for run_ in results['runs']:
        for precision, inf in run_['inference'].items():
            stages = inf['stages']
            node = inf.get('node') or {}
            if 'ratio_latency' in node:
                ratio = f'{node["ratio_latency"]:.2f}'
                if node.get('ratio_processing') is not None:
                    ratio += f' ({node["ratio_processing"]:.2f})'
            else:
                ratio = 'skipped' if node else '-'
            batches = inf['classifier_batches']
            rows.append([
                short_name(run_['backbone']), precision, inf['method'],
                f'{inf["fps"]:.2f}',
                f'{inf["end_to_end"]["median_ms"]:.1f} / {inf["end_to_end"]["p95_ms"]:.1f}',
                f'{_ms(stages.get("decode_image"))} / {_ms(stages.get("decode_jpeg"))}',
                _ms(stages.get('detect')), _ms(stages.get('crop')),
                _ms(stages.get('classify')), _ms(stages.get('message')),
                ' / '.join(f'{b["faces_per_s"]:.1f}' for b in batches.values()),
                f'{inf["faces_found"]["median"]:g}/{cfg["faces"]}', ratio,
                f'{inf["memory"]["cpu_peak_rss_mib"]:.0f}'
                + (f' / {inf["memory"]["cuda_max_allocated_mib"]:.0f}'
                   if inf['memory']['cuda_max_allocated_mib'] is not None else ''),
            ])
    batch_sizes = '/'.join(str(b) for b in cfg['batch_sizes'])
    if rows:
        lines += ['Inference (ms are medians; node/pipeline = publish->answer latency over the '
                  'pipeline alone, (node\'s own processing time over it))',
                  _table(['backbone', 'prec', 'model', 'fps', 'e2e ms med/p95',
                          'decode img/jpeg', 'detect', 'crop', 'classify', 'msg',
                          f'faces/s b{batch_sizes}', 'faces', 'node/pipeline',
                          'peak MiB cpu/cuda'], rows), '']
    from soft_biometrics_ros.tools.bench.runtimes import runtime_rows
    rows = runtime_rows(results)
    if rows:
        lines += ['Classifier runtimes (fp32, same model, interleaved in one process; ms per '
                  'face torch / onnxruntime = ratio, higher = ONNX Runtime faster)',
                  _table(['backbone', 'prec', 'classifier alone', 'end to end ms',
                          'classify stage', 'export s / cached load s'], rows), '']
    rows = []
    for run_ in results['runs']:
        if 'params' not in run_:
            continue
        params = run_['params']
        zs = run_['zero_shot']
        rows.append([short_name(run_['backbone']), ZERO_SHOT,
                     f'{params["clip_total"] / 1e6:.2f}',
                     f'{params["vision_tower"] / 1e6:.2f} / {params["text_tower"] / 1e6:.2f}',
                     '0 (0 %)', f'{zs["flops_per_face"]["gflops"]:.3f}', '-',
                     f'{zs["flops_per_face"]["attention_gflops"]:.3f}'])
        for method, info in run_['methods'].items():
            p = info['params']
            rows.append([short_name(run_['backbone']), method, f'{p["total"] / 1e6:.2f}',
                         f'{p["vision"] / 1e6:.2f} / -',
                         f'{p["trainable"] / 1e6:.3f} ({p["trainable_percent"]:.2f} %)',
                         f'{info["flops_per_face"]["gflops"]:.3f}',
                         f'{info["flops_per_face_merged"]["gflops"]:.3f}'
                         if 'flops_per_face_merged' in info else '-',
                         f'{info["flops_per_face"]["attention_gflops"]:.3f}'])
    if rows:
        lines += ['Model cost (parameters in millions; GFLOPs per face, attention included; '
                  'merged = adapters folded into the weights for deployment)',
                  _table(['backbone', 'method', 'params M', 'vision / text M', 'trainable M',
                          'GFLOPs/face', 'merged', 'of which attention'], rows), '']
    rows = []
    for run_ in results['runs']:
        for method, info in run_['methods'].items():
            for precision, train in info.get('train', {}).items():
                mem = train['memory']
                rows.append([short_name(run_['backbone']), precision, method, train['batch'],
                             f'{train["step"]["median_ms"]:.0f}',
                             f'{train["samples_per_s"]:.2f}',
                             f'{mem["cpu_peak_rss_mib"]:.0f}'
                             + (f' / {mem["cuda_max_allocated_mib"]:.0f}'
                                if mem['cuda_max_allocated_mib'] is not None else '')])
    if rows:
        lines += ['Training step (forward + masked CE + backward + optimizer step)',
                  _table(['backbone', 'prec', 'method', 'batch', 'step ms', 'samples/s',
                          'peak MiB cpu/cuda'], rows), '']
    if results['runs'] and 'flop_counting' in results['runs'][0]:
        lines.append(f'FLOPs: {results["runs"][0]["flop_counting"]}')
    return '\n'.join(lines)


def format_short_table(results: dict) -> str:
    """Render one short table: a row per backbone and precision (what gpu-check prints)."""
    cfg = results['config']
    largest = str(max(cfg['batch_sizes']))
    rows = []
    for run_ in results['runs']:
        method = run_['methods'].get(cfg['pipeline_method'], {})
        flops = method.get('flops_per_face_merged') or method.get('flops_per_face') or \
            run_.get('zero_shot', {}).get('flops_per_face')
        for precision, inf in run_['inference'].items():
            memory = inf['memory']
            node = inf.get('node') or {}
            rows.append([
                short_name(run_['backbone']), precision, f'{inf["fps"]:.1f}',
                f'{inf["end_to_end"]["median_ms"]:.1f}', _ms(inf['stages'].get('detect')),
                _ms(inf['stages'].get('classify')),
                f'{inf["classifier_batches"][largest]["faces_per_s"]:.0f}',
                f'{flops["gflops"]:.2f}' if flops else '-',
                f'{memory["cuda_max_allocated_mib"]:.0f}'
                if memory['cuda_max_allocated_mib'] is not None
                else f'{memory["cpu_peak_rss_mib"]:.0f} (RSS)',
                f'{node["ratio_latency"]:.2f}' if 'ratio_latency' in node else
                ('skipped' if node else '-'),
            ])
    width, height = cfg['frame']
    return (f'{width}x{height}, {cfg["faces"]} face(s), model {cfg["pipeline_method"]}, '
            f'{results["environment"]["device_name"]}\n'
            + _table(['backbone', 'prec', 'fps', 'e2e ms', 'detect ms', 'classify ms',
                      f'faces/s b{largest}', 'GFLOPs/face', 'peak MiB', 'node/pipeline'],
                     rows))
