"""FLOPs of a call, attention included: what the bench and training/compare.py count.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as 2).
In torch 2.14 it has formulas for scaled_dot_product_attention's CUDA kernels only: the
CPU kernel (`aten._scaled_dot_product_flash_attention_for_cpu`) counts 0. The same formula
is registered for the CPU kernels here, so attention is counted on every device; a
count says how it was counted (`FlopCount.counting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch.utils import flop_counter


def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                         out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape,
                                                 value_shape)


def attention_flop_formulas() -> Tuple[Dict[Any, Callable], List[str]]:
    """Return (custom_mapping for FlopCounterMode, names of the ops it adds).

    Adds torch's own SDPA formulas for the CPU attention kernels that this torch
    version's flop registry lacks (none, once torch counts them itself).
    """
    aten = torch.ops.aten
    wanted = [('_scaled_dot_product_flash_attention_for_cpu', _sdpa_forward_flops),
              ('_scaled_dot_product_flash_attention_for_cpu_backward', _sdpa_backward_flops),
              ('_scaled_dot_product_fused_attention_overrideable', _sdpa_forward_flops)]
    mapping: Dict[Any, Callable] = {}
    added: List[str] = []
    for name, formula in wanted:
        packet = getattr(aten, name, None)
        if packet is None or packet in flop_counter.flop_registry:
            continue
        mapping[packet] = formula
        added.append(f'aten.{name}')
    return mapping, added


@dataclass
class FlopCount:
    """FLOPs of one call: total, the attention share, per-op totals, how it was counted."""

    total: int
    attention: int
    by_op: Dict[str, int]
    counting: str

    def to_dict(self, per: int = 1) -> dict:
        """Plain-JSON form in GFLOPs, divided by `per` (e.g. the batch size)."""
        return {'gflops': round(self.total / per / 1e9, 4),
                'attention_gflops': round(self.attention / per / 1e9, 4),
                'by_op_gflops': {k: round(v / per / 1e9, 4) for k, v in self.by_op.items()}}


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Count the FLOPs of `fn()` with FlopCounterMode, attention kernels included."""
    mapping, added = attention_flop_formulas()
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    by_op = {str(op).replace('aten.', ''): int(n)
             for op, n in counter.get_flop_counts().get('Global', {}).items()}
    attention = sum(n for op, n in by_op.items() if 'attention' in op)
    counting = 'torch.utils.flop_counter.FlopCounterMode'
    if added:
        counting += (' + scaled_dot_product_attention formula registered for '
                     + ', '.join(added) + f' (uncounted by torch {torch.__version__})')
    return FlopCount(total=sum(by_op.values()), attention=attention, by_op=by_op,
                     counting=counting)
