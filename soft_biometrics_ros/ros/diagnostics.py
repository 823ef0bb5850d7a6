"""The node's /diagnostics report: a `runtime.frame_stats.FrameStats` snapshot as a message.

`diagnostic_status` turns a snapshot into the level, message and key/value list a
`diagnostic_msgs/DiagnosticStatus` carries, and `diagnostic_array` builds the message.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from soft_biometrics_ros.runtime.frame_stats import STAGES

# diagnostic_msgs/DiagnosticStatus levels (bytes in the message).
OK, WARN, ERROR, STALE = 0, 1, 2, 3


def diagnostic_status(snapshot: dict, state: str, device: str = '', backbone: str = '',
                      error: str = '') -> Tuple[int, str, List[Tuple[str, str]]]:
    """Return (level, message, [(key, value), ...]) describing the node's health.

    ERROR when `error` is set (e.g. the model failed to load), WARN when the node is
    not active or bad frames arrived in the last window, OK otherwise.
    """
    bad_total = snapshot['bad_total']
    if error:
        level, message = ERROR, error
    elif state != 'active':
        level, message = WARN, f'{state}: not processing frames'
    elif snapshot['bad_recent']:
        level = WARN
        message = f'bad input frames ({bad_total} so far): {snapshot["last_bad_reason"]}'
    else:
        level = OK
        message = (f'processing {snapshot["processed_rate_hz"]:.1f} Hz of '
                   f'{snapshot["input_rate_hz"]:.1f} Hz input')
    values = [
        ('state', state),
        ('device', device),
        ('backbone', backbone),
        ('input rate (Hz)', f'{snapshot["input_rate_hz"]:.2f}'),
        ('processed rate (Hz)', f'{snapshot["processed_rate_hz"]:.2f}'),
        ('frames received', str(snapshot['received'])),
        ('frames processed', str(snapshot['processed'])),
        ('frames dropped', str(snapshot['dropped'])),
        ('bad frames', str(bad_total)),
    ]
    values += [(f'bad frames: {kind}', str(n)) for kind, n in sorted(snapshot['bad'].items())]
    if snapshot['last_bad_reason']:
        values.append(('last bad frame', snapshot['last_bad_reason']))
    values.append(('faces in last frame', str(snapshot['faces_last_frame'])))
    for stage in STAGES:
        summary = snapshot['latency_ms'].get(stage)
        if summary is not None:
            values.append((f'latency {stage} (ms)',
                           f'mean {summary["mean"]:.1f} max {summary["max"]:.1f}'))
    return level, message, values


def diagnostic_array(stamp, name: str, hardware_id: str, level: int, message: str,
                     values: List[Tuple[str, str]]):
    """Build a diagnostic_msgs/DiagnosticArray holding one DiagnosticStatus."""
    status = DiagnosticStatus(level=bytes([level]), name=name, message=message,
                              hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in values])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def values_dict(status) -> Dict[str, str]:
    """Return a DiagnosticStatus's key/value list as a dict (for readers and tests)."""
    return {kv.key: kv.value for kv in status.values}
