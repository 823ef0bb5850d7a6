"""Training configuration and command line: defaults, overrides, errors naming keys, dispatch."""

import pickle
import textwrap

import pytest

from training import cli
from training.config import (OPTIONS, ConfigError, check_data_roots, check_method, load_config,
                             make_config, parse_overrides, suggest_name)

from conftest import REPO_ROOT

TINY = REPO_ROOT / 'config' / 'train' / 'tiny_cpu.yaml'


def test_tiny_config_loads_with_every_key():
    cfg = load_config(TINY)
    assert cfg.model.backbone == 'PE-Core-T-16-384'
    assert cfg.model.pretrained == 'none'
    assert cfg.train.device == 'cpu'
    assert cfg.data.rafdb.root is None
    defaults = make_config()
    for option in OPTIONS:  # every key of the table is readable and has its default
        if option.path != 'output_dir':
            assert defaults[option.path] == option.check(option.path, option.default)
        assert cfg[option.path] == cfg.get(option.path)


def test_defaults_are_complete_and_output_dir_follows_the_file_name(tmp_path):
    path = tmp_path / 'my_run.yaml'
    path.write_text('train:\n  batch_size: 8\n')
    cfg = load_config(path)
    assert cfg.train.batch_size == 8
    assert cfg.train.epochs == 10 and cfg.data.emotion_fraction == pytest.approx(1 / 3)
    assert cfg.output_dir == 'runs/my_run'
    assert make_config().output_dir == 'runs/default'


def test_overrides_are_yaml_scalars_and_reach_into_free_mappings():
    cfg = load_config(TINY, ['train.batch_size=8', 'train.lr=1e-4', 'train.max_steps=null',
                             'data.verify_images=false', 'method.name=dora',
                             'method.options.rank=16', 'method.options.targets=[qkv, proj]',
                             'loss.weights.age=2.5', 'data.augment.crop_scale=[0.5, 1]',
                             'output_dir=/tmp/somewhere'])
    assert cfg.train.batch_size == 8
    assert cfg.train.lr == pytest.approx(1e-4)  # PyYAML reads 1e-4 as a string
    assert cfg.train.max_steps is None
    assert cfg.data.verify_images is False
    assert cfg.method.name == 'dora'
    assert cfg.method.options == {'rank': 16, 'targets': ['qkv', 'proj']}
    assert cfg.loss.weights == {'age': 2.5, 'gender': 1.0, 'emotion': 1.0}
    assert cfg.data.augment.crop_scale == [0.5, 1.0]
    assert cfg.output_dir == '/tmp/somewhere'


@pytest.mark.parametrize('override, message', [
    ('train.batch_size=-3', 'train.batch_size must be a positive integer, got -3'),
    ('train.batch_size=2.5', 'train.batch_size must be a positive integer, got 2.5'),
    ('train.batchsize=3', 'unknown key train.batchsize (did you mean train.batch_size?)'),
    ('trian.epochs=3', 'unknown key trian.epochs (did you mean train.epochs?)'),
    ('method.name=lorra', 'method.name must be one of'),
    ('loss.strategy=magic', 'loss.strategy must be one of fixed, uncertainty, dwa, gradnorm'),
    ('loss.weights.agee=2', 'unknown task loss.weights.agee'),
    ('loss.weights.age=-1', 'loss.weights.age must be a number >= 0'),
    ('train.device=gpu', 'train.device must be cpu, cuda, cuda:N or mps'),
    ('model.backbone=PE-Core-X-99', 'model.backbone must name an open_clip model'),
    # A prefix of exactly one name suggests that name (not the closest spelling, B-16).
    ('model.backbone=PE-Core-T', "got 'PE-Core-T' (did you mean PE-Core-T-16-384?)"),
    ('model.backbone=pe-core-l-14', "(did you mean PE-Core-L-14-336?)"),
    ('data.emotion_fraction=1.5', 'data.emotion_fraction must be a number in [0, 1)'),
    ('train.lr=fast', "train.lr must be a number > 0, got 'fast'"),
    ('data.verify_images=maybe', 'data.verify_images must be true or false'),
    ('data.augment.crop_scale=[0.9, 0.5]', 'data.augment.crop_scale must be a pair'),
    ('compare.methods=[lora, lora]', 'compare.methods lists a method twice'),
    ('train=5', 'train is a section'),
    ('train.batch_size', 'must look like key.path=value'),
])
def test_bad_overrides_are_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(TINY, [override])
    assert message in str(error.value)


def test_bad_yaml_files_are_rejected_naming_the_key(tmp_path):
    cases = {
        'train:\n  batchsize: 3\n': 'unknown key train.batchsize (did you mean train.batch_size?)',
        'data:\n  rafdb: /data/rafdb\n': 'data.rafdb must be a mapping',
        'model:\n  backbone: PE-Core-T-16-384\n  pretrain: none\n': 'unknown key model.pretrain',
        'optimizer:\n  lr: 1\n': 'unknown key optimizer',
        '- a\n- list\n': 'must hold a mapping',
        'train: {epochs: 0}\n': 'train.epochs must be a positive integer, got 0',
    }
    for text, message in cases.items():
        path = tmp_path / 'bad.yaml'
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert message in str(error.value), (text, str(error.value))
    with pytest.raises(ConfigError, match='does not exist'):
        load_config(tmp_path / 'absent.yaml')


def test_suggest_name_prefers_a_unique_prefix_then_spelling():
    names = ['PE-Core-B-16', 'PE-Core-L-14-336', 'PE-Core-S-16-384', 'PE-Core-T-16-384',
             'PE-Core-bigG-14-448']
    assert suggest_name('PE-Core-T', names) == 'PE-Core-T-16-384'
    assert suggest_name('PE-Core-bigg', names) == 'PE-Core-bigG-14-448'
    assert suggest_name('pe-core-b-16', names) == 'PE-Core-B-16'  # case only
    assert suggest_name('PE-Core-B', names) == 'PE-Core-B-16'  # case-sensitive prefix first
    assert suggest_name('PE-Core', names) is None  # begins every name: no single guess
    assert suggest_name('PE-Core-S-16-385', names) == 'PE-Core-S-16-384'  # spelling
    assert suggest_name('', names) is None


def test_data_roots_are_checked_naming_the_absolute_path_and_the_way_out(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'fairface').mkdir()
    (tmp_path / 'lagenda.txt').write_text('a file, not a folder')
    cfg = load_config(TINY, ['data.rafdb.root=datasets/RAF-DB/basic',
                             'data.fairface.root=fairface', 'data.lagenda.root=lagenda.txt'])
    with pytest.raises(ConfigError) as error:
        check_data_roots(cfg)
    message = str(error.value)
    assert message.startswith(f'data.rafdb.root: folder {tmp_path}/datasets/RAF-DB/basic does '
                              f'not exist; data.lagenda.root: folder {tmp_path}/lagenda.txt '
                              'is not a folder (relative roots are read from the current '
                              f'folder {tmp_path}).')
    assert 'fairface' not in message  # an existing folder is fine
    assert f'(in {TINY} or on the command line, e.g. data.rafdb.root=/data/RAF-DB/basic)' \
        in message
    assert message.endswith('or leave a data set out with data.rafdb.root=null')
    # Left out with null: the rest is checked and named.
    assert check_data_roots(cfg.updated(['data.rafdb.root=null', 'data.lagenda.root=null'])) \
        == ['fairface']
    assert check_data_roots(cfg.updated(['data.rafdb.root=null', 'data.lagenda.root=' + str(
        tmp_path / 'fairface')])) == ['fairface', 'lagenda']
    with pytest.raises(ConfigError, match='no data set configured: set at least one of '
                                          'data.rafdb.root'):
        check_data_roots(load_config(TINY))


def test_updated_returns_a_validated_copy():
    cfg = load_config(TINY)
    changed = cfg.updated({'method.name': 'lora', 'train.max_steps': 2})
    assert changed.method.name == 'lora' and changed.train.max_steps == 2
    assert cfg.method.name == 'linear_probe' and cfg.train.max_steps == 4
    assert cfg.updated(['train.seed=5']).train.seed == 5
    with pytest.raises(ConfigError, match='train.max_steps must be a positive integer'):
        cfg.updated({'train.max_steps': 0})


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(TINY, ['method.options.rank=4', 'data.rafdb.root=/data/raf'])
    again = load_config(cfg.save(tmp_path / 'resolved.yaml'))
    assert again == cfg


def test_config_survives_pickling_for_worker_processes():
    cfg = load_config(TINY, ['method.options.rank=4'])
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and again.source == cfg.source and again.method.options == {'rank': 4}


def test_parse_overrides_keeps_everything_after_the_first_equals_sign():
    assert parse_overrides(['output_dir=/a=b', 'x.y=']) == [('output_dir', '/a=b'), ('x.y', None)]


# --------------------------------------------------------------------------- command line

def test_cli_reports_config_errors_naming_the_key(capsys):
    status = cli.main(['stats', '--config', str(TINY), 'train.batchsize=3'])
    assert status == 2
    err = capsys.readouterr().err
    assert 'unknown key train.batchsize (did you mean train.batch_size?)' in err


def test_cli_print_config_applies_overrides(capsys):
    status = cli.main(['train', '--config', str(TINY), '--print-config', 'train.batch_size=7'])
    assert status == 0
    assert 'batch_size: 7' in capsys.readouterr().out


def test_cli_requires_checkpoint_for_evaluate_and_config_for_everything(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['evaluate', '--config', str(TINY)])
    assert exit_info.value.code == 2
    assert 'needs --checkpoint' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(['stats'])
    assert 'needs --config' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(['stats', '--config', str(TINY), '--output', '/tmp/x'])
    assert 'takes no --output' in capsys.readouterr().err


def test_cli_dispatches_lazily_with_checkpoint_and_output(tmp_path, monkeypatch, capsys):
    package = tmp_path / 'dispatch_probe.py'
    package.write_text(textwrap.dedent('''
        import json
        def run(cfg, checkpoint, out):
            with open(cfg.output_dir + '/called.json', 'w') as handle:
                json.dump({'checkpoint': checkpoint, 'out': out,
                           'batch_size': cfg.train.batch_size}, handle)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, 'export', cli.Command(
        'dispatch_probe', 'run', 'probe', needs_checkpoint=True, takes_output=True))
    from soft_biometrics_ros.models.checkpoint import save_checkpoint
    from soft_biometrics_ros.models.multitask import build_multitask_model
    checkpoint = save_checkpoint(build_multitask_model('PE-Core-T-16-384', 'none'),
                                 tmp_path / 'ckpt')
    status = cli.main(['export', '--config', str(TINY), '--checkpoint', str(checkpoint),
                       f'output_dir={tmp_path}', 'train.batch_size=3'])
    assert status == 0
    import json
    called = json.loads((tmp_path / 'called.json').read_text())
    assert called == {'checkpoint': str(checkpoint), 'out': str(tmp_path / 'export'),
                      'batch_size': 3}
    status = cli.main(['export', '--config', str(TINY), '--checkpoint', str(tmp_path / 'no'),
                       f'output_dir={tmp_path}'])
    err = capsys.readouterr().err
    assert status == 2 and f'--checkpoint {tmp_path / "no"} does not exist' in err


def test_cli_says_when_a_command_module_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, 'compare', cli.Command(
        'training.no_such_module_here', 'run', 'absent'))
    status = cli.main(['compare', '--config', str(TINY)])
    assert status == 2
    err = capsys.readouterr().err
    assert "command 'compare' is not available" in err
    assert 'training.no_such_module_here' in err


def test_cli_lists_keys(capsys):
    assert cli.main(['--list-keys']) == 0
    out = capsys.readouterr().out
    assert '`train.batch_size`' in out and '`data.rafdb.root`' in out


def test_method_options_are_checked_by_the_adapter_registry():
    cfg = load_config(TINY, ['method.name=lora', 'method.options.rank=4'])
    check_method(cfg)  # valid: passes
    with pytest.raises(ConfigError) as error:
        check_method(cfg.updated(['method.options.rnak=4']))
    assert 'method.options (method lora)' in str(error.value) and 'rnak' in str(error.value)
    with pytest.raises(ConfigError, match='rank'):
        check_method(cfg.updated(['method.options.rank=0']))
