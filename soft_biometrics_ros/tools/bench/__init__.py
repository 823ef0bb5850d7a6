"""The benchmark behind `soft_biometrics_bench` (`python -m soft_biometrics_ros.tools.bench`).

One module a job: `config` (what to measure), `timing` (how; FLOPs are counted by
`models.flops`), `frames` (the input), `costs`, `pipeline` and `node` (the sections),
`run` (the order), `report` (JSON and tables), `cli` (the command line).
"""

from soft_biometrics_ros.tools.bench.cli import main
from soft_biometrics_ros.tools.bench.report import format_short_table

__all__ = ['format_short_table', 'main']
