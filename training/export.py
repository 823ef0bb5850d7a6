"""Export a training checkpoint as the node's deployable checkpoint (adapters merged).

`python -m training export --config FILE --checkpoint DIR --output OUT`:

1. loads DIR (a checkpoint of `train`, e.g. output_dir/checkpoints/best) on the CPU;
2. folds the method's adapters into the base weights where the method can
   (MultitaskModel.merge_adapters: LoRA, DoRA and LoRA+ merge
   completely, MTLoRA its task-agnostic part; linear_probe and partial have nothing
   to merge), so the node runs plain linears;
3. writes OUT atomically in the same checkpoint format, self-contained (every weight
   stored, so the node needs no pretrained weights file: create_classifier(checkpoint=OUT)
   loads it; the `checkpoint` parameter of the node, soft_biometrics_predict);
4. checks that OUT, loaded the way the node loads it, gives the same probabilities as
   DIR on a fixed probe batch (max abs difference <= `tolerance`), and writes the
   result to OUT/export_report.json. A larger difference is an error and OUT is not kept;
5. with `--onnx`, also writes the ONNX graph of OUT into OUT/onnx/ (the file
   `runtime: onnxruntime` loads instead of exporting at first start; see
   soft_biometrics_ros.models.onnx_runtime), checked against torch on the probe batch
   within the same tolerance, its difference in the report.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Dict, Optional

import torch

from soft_biometrics_ros import labels
from training.config import ConfigError

LOGGER = logging.getLogger(__name__)

PROBE_BATCH = 4
DEFAULT_TOLERANCE = 1e-4


def probe_batch(input_size: int, count: int = PROBE_BATCH, seed: int = 0) -> torch.Tensor:
    """Return a fixed batch of normalised-looking images (count, 3, S, S)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, 3, input_size, input_size), generator=generator).clamp_(-1, 1)


def max_probability_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]
                               ) -> Dict[str, float]:
    """Return {task: max |a - b|} of two predict_proba outputs."""
    return {task: float((a[task] - b[task]).abs().max()) for task in labels.TASKS}


def export_checkpoint(checkpoint: str | Path, output: str | Path,
                      pretrained: Optional[str] = None,
                      tolerance: float = DEFAULT_TOLERANCE, onnx: bool = False) -> dict:
    """Merge and write `checkpoint` to `output`; return the export report (see module doc)."""
    from soft_biometrics_ros.models.checkpoint import load_checkpoint, save_checkpoint
    from soft_biometrics_ros.models.factory import create_classifier

    checkpoint, output = Path(checkpoint), Path(output)
    if not checkpoint.is_dir():
        raise ConfigError(f'--checkpoint {checkpoint} is not a checkpoint folder')
    if output.resolve() == checkpoint.resolve():
        raise ConfigError(f'--output {output} is the checkpoint itself; choose another folder')
    if output.exists() and (not output.is_dir() or (
            any(output.iterdir()) and not (output / 'manifest.json').is_file())):
        raise ConfigError(f'--output {output} exists and is not a checkpoint folder; refusing '
                          'to replace it')
    model = load_checkpoint(str(checkpoint), pretrained=pretrained, device=torch.device('cpu'))
    model.eval()
    probe = probe_batch(model.input_size)
    before = model.predict_proba(probe)
    parameters_before = sum(p.numel() for p in model.parameters())
    merged = model.merge_adapters()
    merged_layers = sorted({name.rsplit('.', 1)[0] for name in merged})

    temporary = output.with_name(f'.{output.name}.tmp')
    if temporary.exists():
        shutil.rmtree(temporary)
    save_checkpoint(model, temporary, include_backbone=True)
    # Loaded as the node loads it: no pretrained weights source needed.
    reloaded = create_classifier(checkpoint=str(temporary), backbone=None, pretrained='none',
                                 device='cpu', precision='fp32')
    after = reloaded.predict_proba(probe)
    differences = max_probability_difference(before, after)
    worst = max(differences.values())
    report = {
        'source_checkpoint': str(checkpoint), 'output': str(output),
        'method': getattr(model, 'method_name', None), 'backbone': model.backbone_name,
        'merged': bool(merged), 'merged_layers': len(merged_layers),
        'max_probability_difference': differences, 'tolerance': tolerance,
        'parameters_before_merge': parameters_before,
        'parameters_after_merge': sum(p.numel() for p in reloaded.parameters()),
    }
    if worst > tolerance:
        shutil.rmtree(temporary)
        raise RuntimeError(
            f'exported model differs from {checkpoint} by {worst:.2e} in probability '
            f'(tolerance {tolerance:.0e}); export not written')
    if onnx:
        report['onnx'] = _write_onnx_graph(reloaded, temporary, output, probe, after,
                                           tolerance)
    (temporary / 'export_report.json').write_text(json.dumps(report, indent=1))
    if output.exists():
        shutil.rmtree(output)
    temporary.rename(output)
    LOGGER.info('exported %s (%s, %d layers merged) to %s; max probability difference %.2e',
                checkpoint, report['method'], len(merged_layers), output, worst)
    return report


def _write_onnx_graph(classifier, folder: Path, output: Path, probe: torch.Tensor,
                      expected: Dict[str, torch.Tensor], tolerance: float) -> dict:
    """Export `classifier` (loaded from `folder`) to folder/onnx; return its report entry.

    The graph's cache key does not depend on the folder's name, so the graph written in
    the temporary folder is the one `output` finds once renamed.
    """
    from soft_biometrics_ros.models import onnx_runtime
    try:
        exported = onnx_runtime.onnx_classifier(classifier, checkpoint=folder)
        differences = max_probability_difference(expected, exported.predict_proba(probe))
    except Exception:
        shutil.rmtree(folder)
        raise
    worst = max(differences.values())
    if worst > tolerance:
        shutil.rmtree(folder)
        raise RuntimeError(f'the ONNX graph differs from torch by {worst:.2e} in probability '
                           f'(tolerance {tolerance:.0e}); export not written')
    return {'graph': str(output / exported.graph_path.relative_to(folder)),
            'onnxruntime': onnx_runtime.onnxruntime_version(),
            'max_probability_difference': differences}


def run(cfg, checkpoint: str, output: str, onnx: bool = False) -> dict:
    """Entry point of `python -m training export` (`--onnx`: the ONNX graph too)."""
    return export_checkpoint(checkpoint, output, pretrained=cfg.model.pretrained, onnx=onnx)
