"""Command line of every training command: ``python -m training <command> --config FILE``.

Commands and what they call (imported only when used)::

    stats      training.stats.run(cfg)
    train      training.trainer.run(cfg)
    evaluate   training.evaluation.run(cfg, checkpoint)            needs --checkpoint DIR
    zero-shot  training.evaluation.run_zero_shot(cfg)
    compare    training.compare.run(cfg)
    export     training.export.run(cfg, checkpoint, out)           needs --checkpoint DIR;
                                                                   --output DIR (default
                                                                   <output_dir>/export)

Arguments after the options are dotted overrides parsed as YAML scalars, e.g.
``train.batch_size=8 method.name=dora data.rafdb.root=/data/RAF-DB/basic``.
Configuration and data errors print one line naming the key and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from training.config import ConfigError, check_method, describe_options, load_config

LOGGER = logging.getLogger('training')


@dataclass(frozen=True)
class Command:
    """A training command: the module and function it runs and what it needs."""

    module: str
    function: str
    help: str
    needs_checkpoint: bool = False
    takes_output: bool = False
    checks_method: bool = False


COMMANDS: Dict[str, Command] = {
    'stats': Command('training.stats', 'run',
                     'class counts per data set; raw vs balanced-sampler shares'),
    'train': Command('training.trainer', 'run', 'adapt PE-Core with the configured method',
                     checks_method=True),
    'evaluate': Command('training.evaluation', 'run', 'metrics of a checkpoint',
                        needs_checkpoint=True),
    'zero-shot': Command('training.evaluation', 'run_zero_shot',
                         'metrics of the zero-shot CLIP baseline'),
    'compare': Command('training.compare', 'run', 'run or collect every method; study table',
                       checks_method=True),
    'export': Command('training.export', 'run', 'deployable checkpoint for the node',
                      needs_checkpoint=True, takes_output=True),
}


class CommandUnavailable(RuntimeError):
    """The module implementing a command is not part of this installation (yet)."""


def resolve(name: str) -> Callable:
    """Return the function a command runs, importing its module now."""
    command = COMMANDS[name]
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as error:
        if error.name != command.module:
            raise  # a dependency of the module is missing: show the real error
        raise CommandUnavailable(
            f"command '{name}' is not available: its module {command.module} does not exist "
            'in this checkout yet') from None
    function = getattr(module, command.function, None)
    if function is None:
        raise CommandUnavailable(f"command '{name}' is not available: {command.module} has no "
                                 f'{command.function}()')
    return function


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m training``."""
    commands = '\n'.join(f'  {name:<10} {c.help}' for name, c in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog='python -m training',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Training, evaluation and data statistics of soft_biometrics_ros.',
        epilog=f'commands:\n{commands}\n\nOverrides: key.path=value (YAML scalars), e.g. '
               'train.batch_size=8 method.name=dora. --list-keys shows every key.')
    parser.add_argument('command', nargs='?', choices=sorted(COMMANDS), metavar='command',
                        help='one of ' + ', '.join(COMMANDS))
    parser.add_argument('overrides', nargs='*', metavar='key.path=value',
                        help='configuration overrides')
    parser.add_argument('--config', '-c', help='training configuration YAML file')
    parser.add_argument('--checkpoint', help='checkpoint directory (evaluate, export)')
    parser.add_argument('--output', help='output directory (export)')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved configuration and exit')
    parser.add_argument('--list-keys', action='store_true',
                        help='print every configuration key with its default and exit')
    parser.add_argument('--log-level', default='INFO',
                        choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'], help='logging level')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python -m training``; return the process exit status."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.list_keys:
        print(describe_options())
        return 0
    if args.command is None:
        parser.error('a command is required: ' + ', '.join(COMMANDS))
    if not args.config:
        parser.error(f'{args.command} needs --config FILE (e.g. config/train/tiny_cpu.yaml)')
    command = COMMANDS[args.command]
    if command.needs_checkpoint and not args.checkpoint:
        parser.error(f'{args.command} needs --checkpoint DIR')
    if not command.needs_checkpoint and args.checkpoint:
        parser.error(f'{args.command} takes no --checkpoint')
    if not command.takes_output and args.output:
        parser.error(f'{args.command} takes no --output (set output_dir=... instead)')
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_yaml(), end='')
            return 0
        function = resolve(args.command)
        if command.checks_method:
            check_method(cfg)
        call_args: List = [cfg]
        if command.needs_checkpoint:
            checkpoint = Path(args.checkpoint)
            if not checkpoint.is_dir():
                raise ConfigError(f'--checkpoint {checkpoint} is not a directory')
            call_args.append(str(checkpoint))
        if command.takes_output:
            call_args.append(args.output or str(Path(cfg.output_dir) / 'export'))
        function(*call_args)
    except (ConfigError, CommandUnavailable) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except Exception as error:
        from training.datasets.common import DatasetError
        if isinstance(error, DatasetError):
            print(f'error: {error}', file=sys.stderr)
            return 2
        raise
    return 0
