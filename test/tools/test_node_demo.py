"""The demo: model choice, node command line, table, and giving up on a failed node.

The end-to-end demo (`make demo`) starts the real node; here the parts that decide
what it runs and how it prints are checked on their own, and one real node whose
configure fails checks that the demo reports it at once (not after --timeout).
"""

import pytest

from soft_biometrics_ros.tools import demo
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.ros.parameters import SPECS


def args(*argv):
    """Parsed demo arguments."""
    return demo.parse_args(list(argv))


def test_random_weights_when_asked_and_a_loud_banner(monkeypatch):
    monkeypatch.delenv('SOFT_BIOMETRICS_WEIGHTS', raising=False)
    monkeypatch.delenv('SOFT_BIOMETRICS_CHECKPOINT', raising=False)
    choice = demo.choose_model(args('--pretrained', 'none'))
    assert choice.untrained and choice.backbone == 'PE-Core-T-16-384'
    assert choice.pretrained == 'none' and choice.checkpoint == ''
    text = demo.banner(['UNTRAINED MODEL: RANDOM WEIGHTS'])
    lines = text.splitlines()
    assert len(lines) == 3 and set(lines[0]) == {'!'} and 'UNTRAINED' in lines[1]
    assert len({len(line) for line in lines}) == 1


def test_without_weights_falls_back_to_untrained_pe_core_t(monkeypatch):
    monkeypatch.delenv('SOFT_BIOMETRICS_WEIGHTS', raising=False)
    monkeypatch.delenv('SOFT_BIOMETRICS_CHECKPOINT', raising=False)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    choice = demo.choose_model(args())
    if choice.untrained:  # no cached Meta weights on this machine (the usual case here)
        assert choice.backbone == 'PE-Core-T-16-384' and choice.pretrained == 'none'
        assert 'no real weights' in choice.note and 'PE-Core-B-16' in choice.note
    else:  # a machine with Meta's weights in its hub cache uses them
        assert choice.backbone == 'PE-Core-B-16'
        assert choice.pretrained.endswith(('.safetensors', '.bin', '.pt', '.pth'))


def test_local_weights_file_from_the_environment(monkeypatch, tmp_path):
    weights = tmp_path / 'PE-Core-S-16-384.safetensors'
    weights.write_bytes(b'not read here')
    monkeypatch.setenv('SOFT_BIOMETRICS_WEIGHTS', str(weights))
    monkeypatch.delenv('SOFT_BIOMETRICS_CHECKPOINT', raising=False)
    choice = demo.choose_model(args())
    assert not choice.untrained
    assert (choice.backbone, choice.pretrained) == ('PE-Core-S-16-384', str(weights))
    unnamed = tmp_path / 'weights.safetensors'
    unnamed.write_bytes(b'x')
    monkeypatch.setenv('SOFT_BIOMETRICS_WEIGHTS', str(unnamed))
    with pytest.raises(SystemExit, match='pass --backbone'):
        demo.choose_model(args())
    choice = demo.choose_model(args('--backbone', 'PE-Core-L-14-336'))
    assert choice.backbone == 'PE-Core-L-14-336'


def test_checkpoint_wins(monkeypatch, tmp_path):
    monkeypatch.setenv('SOFT_BIOMETRICS_CHECKPOINT', str(tmp_path))
    choice = demo.choose_model(args())
    assert choice.checkpoint == str(tmp_path) and not choice.untrained
    assert choice.backbone == '' and choice.pretrained == ''  # the checkpoint's own


def test_node_command_sets_only_real_parameters():
    choice = demo.ModelChoice('', 'PE-Core-T-16-384', 'none', True, 'test')
    command = demo.node_command(choice, args('--device', 'cpu'))
    assert command[1:3] == ['-m', 'soft_biometrics_ros.ros.node']
    params = [command[i + 1] for i, part in enumerate(command) if part == '-p']
    names = {p.split(':=')[0] for p in params}
    assert names <= set(SPECS)
    assert 'backbone:=PE-Core-T-16-384' in params and 'pretrained:=none' in params
    assert 'checkpoint' not in names  # empty: the node's default
    assert f'image:={demo.DEMO_IMAGE_TOPIC}' in command


def test_table_rows_sorted_by_face_id():
    import numpy as np
    probs = {'age': np.eye(9)[3] * 0.6 + 0.4 / 9, 'gender': np.array([0.2, 0.8]),
             'emotion': np.eye(7)[3] * 0.7 + 0.3 / 7}
    a = FaceEstimate.from_probabilities((0, 0, 10, 10), 0.99, probs)
    b = FaceEstimate.from_probabilities((20, 0, 30, 10), 0.95, probs)
    a.face_id, b.face_id = 'fxyz0002', 'fxyz0001'
    a.observations, b.observations = 12, 0
    rows = demo.format_face_rows([a, b])
    assert rows[0].split()[0] == 'fxyz0001' and rows[1].split()[0] == 'fxyz0002'
    assert rows[0].split()[-1] == '0' and rows[1].split()[-1] == '12'  # views
    assert '20-29' in rows[0] and 'male' in rows[0] and 'happy' in rows[0]
    assert len(demo.TABLE_HEADER.split()) >= 6


def test_missing_checkpoint_or_weights_stop_before_any_node(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv('SOFT_BIOMETRICS_WEIGHTS', raising=False)
    monkeypatch.delenv('SOFT_BIOMETRICS_CHECKPOINT', raising=False)
    output = tmp_path / 'out'
    with pytest.raises(SystemExit, match=r'checkpoint directory /no/such/ckpt \(--checkpoint\) '
                                         'does not exist'):
        demo.main(['--checkpoint', '/no/such/ckpt', '--output', str(output)])
    assert not (output / 'node.log').exists()  # no node was started
    monkeypatch.setenv('SOFT_BIOMETRICS_CHECKPOINT', str(tmp_path / 'gone'))
    with pytest.raises(SystemExit, match=r'\$SOFT_BIOMETRICS_CHECKPOINT\) does not exist'):
        demo.choose_model(args())
    monkeypatch.delenv('SOFT_BIOMETRICS_CHECKPOINT')
    # A name that names no architecture: the missing file is the message, not --backbone.
    with pytest.raises(SystemExit, match=r'weights file /no/such/weights.safetensors '
                                         r'\(--pretrained\) does not exist'):
        demo.choose_model(args('--pretrained', '/no/such/weights.safetensors'))
    monkeypatch.setenv('SOFT_BIOMETRICS_WEIGHTS', '/no/such/PE-Core-B-16.safetensors')
    with pytest.raises(SystemExit, match=r'\$SOFT_BIOMETRICS_WEIGHTS\) does not exist'):
        demo.choose_model(args())


def test_demo_stops_waiting_when_the_node_fails_to_configure(monkeypatch, tmp_path, capsys):
    """A checkpoint that exists but cannot be loaded: the real node fails configure.

    The node stays up, unconfigured; the demo must report its error at once instead of
    waiting out --timeout (600 s here: without the fix the test sits there that long and
    then fails on the message).
    """
    monkeypatch.delenv('SOFT_BIOMETRICS_WEIGHTS', raising=False)
    monkeypatch.delenv('SOFT_BIOMETRICS_CHECKPOINT', raising=False)
    broken = tmp_path / 'broken_checkpoint'
    broken.mkdir()
    (broken / 'manifest.json').write_text('{"format": "something else"}')
    (broken / 'weights.safetensors').write_bytes(b'\x00not safetensors' * 10)
    output = tmp_path / 'out'
    code = demo.main(['--checkpoint', str(broken), '--device', 'cpu', '--frames', '1',
                      '--timeout', '600', '--output', str(output)])
    out = capsys.readouterr().out
    assert code == 1
    assert f'the node failed to configure: configure failed: could not load checkpoint ' \
           f'{broken}' in out, out
    assert 'did not come up within' not in out
    assert 'node exited with code' not in out  # stopped cleanly by the demo
    log = (output / 'node.log').read_text()
    assert 'configure failed: could not load checkpoint' in log
    assert f'Its log ({output / "node.log"})' in out


def test_ros4hri_option_turns_the_rep155_output_on():
    choice = demo.ModelChoice('', 'PE-Core-T-16-384', 'none', True, 'test')
    command = demo.node_command(choice, args('--device', 'cpu', '--ros4hri'))
    assert 'publish_ros4hri:=true' in command
    assert 'publish_ros4hri:=true' not in demo.node_command(choice, args('--device', 'cpu'))
