"""Command line of every training command: ``python -m training <command> --config FILE``.

Commands and what they call (imported only when used)::

    stats      training.stats.run(cfg)
    train      training.trainer.run(cfg)
    evaluate   training.evaluation.run(cfg, checkpoint)            needs --checkpoint DIR
    zero-shot  training.evaluation.run_zero_shot(cfg)
    compare    training.compare.run(cfg)
    export     training.export.run(cfg, checkpoint, out, onnx)     needs --checkpoint DIR;
                                                                   --output DIR (default
                                                                   <output_dir>/export);
                                                                   --onnx: the ONNX graph too

Arguments after the options are dotted overrides parsed as YAML scalars, e.g.
``train.batch_size=8 method.name=dora data.rafdb.root=/data/RAF-DB/basic``; options
and overrides may come in any order, before or after the command.
``python -m training <command> --help`` lists the options of one command.

Every command but ``export`` reads data: its data roots are checked (they exist, at
least one is set) before anything is imported, built or downloaded. The user's errors
(configuration and data errors, backbone weights that cannot be had, a checkpoint that
does not fit, a run that cannot be resumed with these settings) print one
``error: ...`` line and exit with status 2; a training stopped by SIGTERM or SIGINT
(checkpoints/last saved) logs "interrupted at step N ... rerun the same command to
resume" and exits with 128 + the signal's number (143, 130); anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

from training.config import (ConfigError, check_data_roots, check_method, describe_options,
                             load_config)

LOGGER = logging.getLogger('training')
PROG = 'python -m training'


@dataclass(frozen=True)
class Command:
    """A training command: the module and function it runs and what it needs."""

    module: str
    function: str
    help: str
    needs_checkpoint: bool = False
    takes_output: bool = False
    checks_method: bool = False
    needs_data: bool = False
    description: str = ''


COMMANDS: Dict[str, Command] = {
    'stats': Command('training.stats', 'run',
                     'class counts per data set; raw vs balanced-sampler shares',
                     needs_data=True,
                     description='Reads the configured data sets and writes stats.json, '
                                 'stats.md and one PNG per task into output_dir: class '
                                 'counts per data set and split, and the shares the '
                                 'balanced sampler draws (stats.draws).'),
    'train': Command('training.trainer', 'run', 'adapt PE-Core with the configured method',
                     checks_method=True, needs_data=True,
                     description='Trains method.name on model.backbone into output_dir '
                                 '(checkpoints/best, checkpoints/last, logs); resumes from '
                                 'checkpoints/last unless train.resume=false. Multi-GPU: '
                                 'torchrun --nproc_per_node=N -m training train ...'),
    'evaluate': Command('training.evaluation', 'run', 'metrics of a checkpoint',
                        needs_checkpoint=True, needs_data=True,
                        description='Metrics of a checkpoint on eval.split (metrics.json, '
                                    'metrics.md, confusion PNGs) in output_dir.'),
    'zero-shot': Command('training.evaluation', 'run_zero_shot',
                         'metrics of the zero-shot CLIP baseline', needs_data=True,
                         description='Metrics of the zero-shot PE-Core CLIP classifier '
                                     '(model.backbone, model.pretrained) on eval.split, in '
                                     'output_dir/zero_shot.'),
    'compare': Command('training.compare', 'run', 'run or collect every method; study table',
                       checks_method=True, needs_data=True,
                       description='Trains (or collects, when finished) every method of '
                                   'compare.methods into output_dir/<method>, evaluates them '
                                   'and the zero-shot baseline, and writes compare.md, '
                                   'compare.csv and compare.png.'),
    'export': Command('training.export', 'run', 'deployable checkpoint for the node',
                      needs_checkpoint=True, takes_output=True,
                      description='Merges the adapters of a checkpoint and writes a '
                                  'self-contained checkpoint the node loads (reads no data).'),
}

# Options that take a value: the command is the first argument that is not one of them
# or their value.
VALUE_OPTIONS = ('--config', '-c', '--checkpoint', '--output', '--log-level')
OVERRIDES_HELP = ('Overrides: key.path=value (YAML scalars), e.g. train.batch_size=8 '
                  'method.name=dora data.rafdb.root=/data/RAF-DB/basic (a data set is left '
                  'out with data.<name>.root=null). --list-keys shows every key.')


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


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--list-keys', action='store_true',
                        help='print every configuration key with its default and exit')
    parser.add_argument('--log-level', default='INFO',
                        choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'],
                        help='logging level (default: INFO)')


def command_parser(name: str, parser: Optional[argparse.ArgumentParser] = None
                   ) -> argparse.ArgumentParser:
    """Return (or fill `parser` as) the argument parser of one command.

    Options that do not apply to the command are accepted but hidden from its help,
    so that using one gives a clear error instead of "unrecognized arguments".
    """
    command = COMMANDS[name]
    if parser is None:
        parser = argparse.ArgumentParser(prog=f'{PROG} {name}')
    parser.description = f'{command.help}.' + (f' {command.description}'
                                               if command.description else '')
    parser.epilog = OVERRIDES_HELP
    parser.add_argument('overrides', nargs='*', metavar='key.path=value',
                        help='configuration overrides')
    parser.add_argument('--config', '-c', metavar='FILE',
                        help='training configuration YAML file (required), e.g. '
                             'config/train/lora.yaml')
    parser.add_argument('--checkpoint', metavar='DIR',
                        help='checkpoint directory (required), e.g. '
                             'runs/lora/checkpoints/best' if command.needs_checkpoint
                        else argparse.SUPPRESS)
    parser.add_argument('--output', metavar='DIR',
                        help='output directory (default: <output_dir>/export)'
                        if command.takes_output else argparse.SUPPRESS)
    parser.add_argument('--onnx', action='store_true',
                        help='also write the ONNX graph of the exported model into it (what '
                             'runtime: onnxruntime loads; saves the export at first start)'
                        if name == 'export' else argparse.SUPPRESS)
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved configuration and exit')
    _add_common_options(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m training``: one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Training, evaluation and data statistics of soft_biometrics_ros.',
        epilog=f'{PROG} <command> --help lists the options of one command. '
               f'{OVERRIDES_HELP}')
    _add_common_options(parser)
    subparsers = parser.add_subparsers(dest='command', metavar='command', title='commands')
    for name, command in COMMANDS.items():
        command_parser(name, subparsers.add_parser(name, help=command.help))
    return parser


def split_command(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """Return (command, the other arguments): the command may be anywhere among them."""
    skip = False
    for index, token in enumerate(argv):
        if skip:
            skip = False
        elif token == '--':
            break
        elif token in COMMANDS:
            return token, [*argv[:index], *argv[index + 1:]]
        elif token.startswith('-') and '=' not in token:
            # An option that takes a value (or an unambiguous abbreviation of one).
            skip = token in VALUE_OPTIONS or (token.startswith('--') and len(token) > 3 and any(
                o.startswith(token) for o in VALUE_OPTIONS if o.startswith('--')))
    return None, list(argv)


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """Return the exception types that are the user's errors (printed as one line).

    Only modules already imported can have raised theirs, so none is imported here.
    """
    types: List[Type[BaseException]] = [ConfigError, CommandUnavailable]
    for module_name, names in (('training.datasets.common', ('DatasetError',)),
                               ('soft_biometrics_ros.models.onnx_runtime',
                                ('OnnxRuntimeUnavailable',)),
                               ('soft_biometrics_ros.models.backbone', ('BackboneError',)),
                               ('soft_biometrics_ros.models.checkpoint', ('CheckpointError',)),
                               ('soft_biometrics_ros.settings', ('SettingError',))):
        module = sys.modules.get(module_name)
        types.extend(getattr(module, n) for n in names if hasattr(module, n))
    return tuple(types)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``python -m training``; return the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    name, rest = split_command(argv)
    if name is None:
        args, _ = parser.parse_known_args(argv)  # --help, --list-keys, or a bad command
        if args.list_keys:
            print(describe_options())
            return 0
        parser.error('a command is required: ' + ', '.join(COMMANDS))
    sub = command_parser(name)  # the same parser as the subparser `name`
    args = sub.parse_intermixed_args(rest)
    if args.list_keys:
        print(describe_options())
        return 0
    if not args.config:
        sub.error(f'{name} needs --config FILE (e.g. config/train/tiny_cpu.yaml)')
    command = COMMANDS[name]
    if command.needs_checkpoint and not args.checkpoint:
        sub.error(f'{name} needs --checkpoint DIR')
    if not command.needs_checkpoint and args.checkpoint:
        sub.error(f'{name} takes no --checkpoint')
    if not command.takes_output and args.output:
        sub.error(f'{name} takes no --output (set output_dir=... instead)')
    if name != 'export' and args.onnx:
        sub.error(f'{name} takes no --onnx (export does)')
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_yaml(), end='')
            return 0
        if command.needs_data:
            check_data_roots(cfg)  # before any import, model build or download
        call_args: List = [cfg]
        if command.needs_checkpoint:
            checkpoint = Path(args.checkpoint)
            from soft_biometrics_ros.models.checkpoint import folder_problem, read_manifest
            problem = folder_problem(checkpoint)
            if problem:
                raise ConfigError(f'--checkpoint {checkpoint} {problem}')
            read_manifest(checkpoint)  # no checkpoint: fail before any data is read
            call_args.append(str(checkpoint))
        if command.takes_output:
            call_args.append(args.output or str(Path(cfg.output_dir) / 'export'))
        function = resolve(name)
        if command.checks_method:
            check_method(cfg)
        function(*call_args, **({'onnx': True} if args.onnx else {}))
    except Exception as error:
        status = getattr(error, 'exit_status', None)
        if isinstance(status, int) and status > 2:  # training.trainer.TrainingInterrupted
            LOGGER.warning('%s', error)
            return status
        if not isinstance(error, user_error_types()):
            raise
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0
