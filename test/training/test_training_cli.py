"""``python -m training``: help per command, data roots checked first, user errors in one line.

Real runs of the command line (cli.main in this process) on the shipped configs and the
tiny generated data sets; nothing is stubbed.
"""

import re
import shutil
import textwrap

import pytest
from training_helpers import tiny_data, tiny_overrides, trained_run

from training import cli
from training.trainer import ResumeError

from conftest import REPO_ROOT

CONFIGS = REPO_ROOT / 'config' / 'train'
TINY = CONFIGS / 'tiny_cpu.yaml'


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """Session-wide folder of the tiny data and cached runs."""
    return tmp_path_factory.getbasetemp()


def words(text):
    """Return `text` with every run of white space as one space (help is wrapped)."""
    return ' '.join(text.split())


def error_line(err):
    """Return the one ``error: ...`` line of stderr (progress bars may precede it)."""
    lines = [line for line in re.split(r'[\r\n]+', err) if line.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


# --------------------------------------------------------------------------- help

@pytest.mark.parametrize('command, shown, hidden', [
    ('stats', ['--config', '--print-config', 'stats.draws'], ['--checkpoint', '--output']),
    ('train', ['--config', 'train.resume=false', 'torchrun'], ['--checkpoint', '--output']),
    ('evaluate', ['--config', '--checkpoint DIR'], ['--output']),
    ('zero-shot', ['--config', 'zero_shot'], ['--checkpoint', '--output']),
    ('compare', ['--config', 'compare.methods'], ['--checkpoint', '--output']),
    ('export', ['--config', '--checkpoint DIR', '--output DIR'], []),
])
def test_each_command_has_its_own_help(command, shown, hidden, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, '--help'])
    assert exit_info.value.code == 0
    out = words(capsys.readouterr().out)
    assert out.startswith(f'usage: python -m training {command} ')
    assert cli.COMMANDS[command].help in out
    for text in shown:
        assert text in out, text
    for text in hidden:
        assert text not in out, text


def test_global_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['--help'])
    assert exit_info.value.code == 0
    out = words(capsys.readouterr().out)
    for name, command in cli.COMMANDS.items():
        assert name in out and command.help in out
    assert 'python -m training <command> --help' in out


def test_options_and_overrides_go_anywhere_around_the_command(capsys):
    # The syntax before per-command parsers: options before the command, overrides
    # between options, abbreviated options.
    status = cli.main(['--config', str(TINY), 'train', 'train.batch_size=7', '--print-config',
                       'train.seed=3'])
    assert status == 0
    out = capsys.readouterr().out
    assert 'batch_size: 7' in out and 'seed: 3' in out
    status = cli.main(['--log-level', 'WARNING', '-c', str(TINY), 'stats', '--print',
                       'output_dir=/tmp/x'])
    assert status == 0 and 'output_dir: /tmp/x' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(['train', '--config', str(TINY), '--checkpoint', '/tmp'])
    assert 'train takes no --checkpoint' in capsys.readouterr().err


# --------------------------------------------------------------------------- data roots

@pytest.mark.parametrize('command', ['stats', 'train', 'evaluate', 'zero-shot', 'compare'])
def test_missing_data_roots_fail_before_any_model_is_built(command, tmp_path, monkeypatch,
                                                           capsys):
    # The shipped configs read datasets/... relative to the current folder. The weights
    # file below does not exist either: a command that built its model before checking
    # the data would fail on the weights (or download them) instead.
    monkeypatch.chdir(tmp_path)
    argv = [command, '--config', str(CONFIGS / 'lora.yaml'),
            f'model.pretrained={tmp_path / "absent_weights.safetensors"}',
            f'output_dir={tmp_path / "out"}']
    if command == 'evaluate':
        argv += ['--checkpoint', str(tmp_path)]
    assert cli.main(argv) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith('error: data.rafdb.root: folder '
                          f'{tmp_path / "datasets" / "RAF-DB" / "basic"} does not exist')
    assert f'data.celeba_hq.root: folder {tmp_path / "datasets" / "CelebAMask-HQ"}' in err
    assert f'relative roots are read from the current folder {tmp_path}' in err
    assert 'leave a data set out with data.rafdb.root=null' in err
    assert 'weights' not in err
    assert not (tmp_path / 'out').exists()


def test_a_data_set_left_out_with_null_is_not_checked(base, tmp_path, capsys):
    roots = tiny_data(base)
    status = cli.main(['stats', '--config', str(CONFIGS / 'lora.yaml'),
                       f'data.rafdb.root={roots["data.rafdb.root"]}', 'data.fairface.root=null',
                       'data.lagenda.root=null', 'data.celeba_hq.root=null',
                       f'output_dir={tmp_path}', 'stats.draws=2000'])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / 'stats.json').is_file()


# --------------------------------------------------------------------------- user errors

def test_unreachable_backbone_weights_are_one_error_line(base, tmp_path, capsys):
    absent = tmp_path / 'absent_weights.safetensors'
    status = cli.main(['zero-shot', '--config', str(TINY),
                       *tiny_overrides(base, tmp_path / 'out', extra=[
                           f'model.pretrained={absent}'])])
    assert status == 2
    err = error_line(capsys.readouterr().err)
    assert str(absent) in err and 'does not exist' in err


def test_a_run_folder_as_checkpoint_is_refused_naming_its_best(base, tmp_path, capsys):
    run_dir = trained_run(base, 'linear_probe')
    capsys.readouterr()  # what training the run printed
    status = cli.main(['evaluate', '--config', str(TINY), '--checkpoint', str(run_dir),
                       *tiny_overrides(base, tmp_path / 'eval')])
    assert status == 2
    raw = capsys.readouterr().err
    err = error_line(raw)
    assert err.startswith(f'error: {run_dir} is not a checkpoint: manifest.json is missing')
    assert f'it holds the checkpoint {run_dir / "checkpoints" / "best"}' in err
    assert 'checking rafdb images' not in raw  # refused before the data was read
    assert not (tmp_path / 'eval').exists()


def test_resume_with_other_settings_is_one_error_line(base, tmp_path, capsys):
    # output_dir holds a linear_probe run's last checkpoint; training lora there refuses.
    source = trained_run(base, 'linear_probe') / 'checkpoints' / 'last'
    shutil.copytree(source, tmp_path / 'checkpoints' / 'last')
    status = cli.main(['train', '--config', str(TINY),
                       *tiny_overrides(base, tmp_path, 'lora', ['train.max_steps=2'])])
    assert status == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith(f'error: cannot resume from {tmp_path / "checkpoints" / "last"}: '
                          "it was trained with method 'linear_probe' (config: 'lora')")
    assert 'train.resume=false' in err
    assert issubclass(ResumeError, ValueError)  # callers catching ValueError still do


def test_bugs_keep_their_traceback(tmp_path, monkeypatch):
    # Only the project's own error types are the user's: any other exception propagates.
    (tmp_path / 'buggy_probe.py').write_text(textwrap.dedent('''
        def run(cfg):
            raise ValueError('a bug, not a user error')
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, 'export', cli.Command('buggy_probe', 'run', 'probe'))
    with pytest.raises(ValueError, match='a bug, not a user error'):
        cli.main(['export', '--config', str(TINY), f'output_dir={tmp_path}'])


def test_export_refusals_are_one_error_line(tmp_path, capsys):
    # A folder that is not a checkpoint, given to export: the user's error, not a traceback.
    from training import cli
    not_a_checkpoint = tmp_path / 'nothing'
    status = cli.main(['export', '--config', str(REPO_ROOT / 'config/train/tiny_cpu.yaml'),
                       '--checkpoint', str(not_a_checkpoint), '--output',
                       str(tmp_path / 'out')])
    assert status == 2
    assert 'error:' in capsys.readouterr().err


# --------------------------------------------------------------------------- hardening

def test_output_dir_that_is_a_file_is_a_config_error(base, tmp_path, capsys):
    afile = tmp_path / 'runs.txt'
    afile.write_text('not a folder')
    for output in (afile, afile / 'lora'):
        status = cli.main(['train', '--config', str(TINY),
                           *tiny_overrides(base, output)])
        assert status == 2
        err = error_line(capsys.readouterr().err)
        assert err.startswith(f'error: output_dir {output} ') and 'a file, not a folder' in err


@pytest.mark.parametrize('val, test', [(0.5, 0.5), (0.7, 0.4), (0.6, 0.4)])
def test_split_fractions_that_leave_no_training_set_are_a_config_error(val, test, capsys):
    status = cli.main(['stats', '--config', str(TINY), '--print-config',
                       f'data.val_fraction={val}', f'data.test_fraction={test}'])
    assert status == 2
    err = error_line(capsys.readouterr().err)
    assert 'data.val_fraction + data.test_fraction must be < 1' in err
    assert cli.main(['stats', '--config', str(TINY), '--print-config',
                     'data.val_fraction=0.5', 'data.test_fraction=0.49']) == 0


@pytest.mark.parametrize('what', ['evaluate', 'export'])
def test_a_file_or_a_bad_manifest_as_checkpoint_is_one_error_line(what, base, tmp_path, capsys):
    import json
    weights = tmp_path / 'model.safetensors'
    weights.write_bytes(b'x')
    extra = ['--output', str(tmp_path / 'out')] if what == 'export' else []
    overrides = tiny_overrides(base, tmp_path / 'o')
    assert cli.main([what, '--config', str(TINY), '--checkpoint', str(weights), *extra,
                     *overrides]) == 2
    err = error_line(capsys.readouterr().err)
    assert 'is a file, not a folder: a checkpoint is a folder holding manifest.json' in err
    assert 'does not exist' not in err
    bad = tmp_path / 'bad'
    shutil.copytree(trained_run(base, 'linear_probe') / 'checkpoints' / 'best', bad)
    capsys.readouterr()
    manifest = json.loads((bad / 'manifest.json').read_text())
    manifest['weights'] = 'weights.safetensors'
    (bad / 'manifest.json').write_text(json.dumps(manifest))
    assert cli.main([what, '--config', str(TINY), '--checkpoint', str(bad), *extra,
                     *overrides]) == 2
    assert 'weights must be an object' in error_line(capsys.readouterr().err)


def pickle_that_runs_code(marker):
    """Bytes of a pickle that, when unpickled, creates `marker` (it must never run)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), 'w'))
    return pickle.dumps(Payload())


def damage(last, how, marker):
    """Damage checkpoints/last in one of the ways a crash, a disk or a person can."""
    import torch
    if how == 'pickle_state':
        (last / 'training_state.pt').write_bytes(pickle_that_runs_code(marker))
    elif how == 'garbage_state':
        (last / 'training_state.pt').write_bytes(b'\x00garbage' * 100)
    elif how == 'keys_state':
        torch.save({'optimizer': {}}, last / 'training_state.pt')
    elif how == 'bad_json':
        (last / 'training_state.json').write_text('{"format": 1, "progress": ')
    elif how == 'keys_json':
        (last / 'training_state.json').write_text('{"format": 1}')
    elif how == 'truncated_weights':
        data = (last / 'weights.safetensors').read_bytes()
        (last / 'weights.safetensors').write_bytes(data[:len(data) // 2])
    elif how == 'pickle_rng':
        (last / 'rng_rank0.pt').write_bytes(pickle_that_runs_code(marker))
    return {'pickle_state': 'training_state.pt', 'garbage_state': 'training_state.pt',
            'keys_state': 'training_state.pt', 'bad_json': 'training_state.json',
            'keys_json': 'training_state.json', 'truncated_weights': 'weights',
            'pickle_rng': 'rng_rank0.pt'}[how]


@pytest.mark.parametrize('how', ['pickle_state', 'garbage_state', 'keys_state', 'bad_json',
                                 'keys_json', 'truncated_weights', 'pickle_rng'])
def test_a_damaged_last_checkpoint_is_one_error_line_naming_the_file(how, base, tmp_path,
                                                                     capsys):
    run_dir = trained_run(base, 'linear_probe')
    shutil.copytree(run_dir / 'checkpoints', tmp_path / 'checkpoints')
    last = tmp_path / 'checkpoints' / 'last'
    marker = tmp_path / 'UNPICKLED'
    named = damage(last, how, marker)
    capsys.readouterr()
    status = cli.main(['train', '--config', str(TINY),
                       *tiny_overrides(base, tmp_path, 'linear_probe', ['train.max_steps=5'])])
    err = error_line(capsys.readouterr().err)
    assert status == 2
    assert not marker.exists(), 'a pickle in the training state was executed'
    assert err.startswith(f'error: cannot resume from {last}: {last}') and named in err
    assert 'train.resume=false' in err and f'{tmp_path / "checkpoints" / "best"} is intact' \
        in err
