"""soft_biometrics_predict: real runs on images, a folder and a video the test writes."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from soft_biometrics_ros import labels, sample_data
from soft_biometrics_ros.runtime.estimates import FaceEstimate
from soft_biometrics_ros.tools.predict import format_table, main

from conftest import REPO_ROOT

CLI = [sys.executable, '-m', 'soft_biometrics_ros.tools.predict']
MODEL_ARGS = ['--device', 'cpu', '--backbone', 'PE-Core-T-16-384', '--pretrained', 'none']


def run_cli(*args, timeout=540):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get(
        'PYTHONPATH', ''))
    return subprocess.run([*CLI, *map(str, args)], cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope='module')
def media(tmp_path_factory):
    """An image, a folder (two images, a corrupt file, a text file) and an mp4 video."""
    root = tmp_path_factory.mktemp('media')
    image = root / 'astronaut.jpg'
    cv2.imwrite(str(image), sample_data.astronaut_bgr())
    folder = root / 'folder'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a_two_faces.png'), sample_data.tiled_faces_bgr(2, 128)[0])
    cv2.imwrite(str(folder / 'b_no_face.png'), np.full((96, 128, 3), 80, np.uint8))
    (folder / 'c_broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    # A real JPEG cut to a quarter and closed with an end marker: OpenCV decodes it to a
    # grey-filled picture and only warns; the strict decoder refuses it.
    whole = cv2.imencode('.jpg', sample_data.astronaut_bgr())[1].tobytes()
    (folder / 'd_damaged.jpg').write_bytes(whole[:len(whole) // 4] + b'\xff\xd9')
    (folder / 'notes.txt').write_text('not media, ignored')
    video = root / 'clip.mp4'
    frames = sample_data.panning_frames(num_frames=3, width=320, height=240, step_px=6)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (320, 240))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame.image)
    writer.release()
    return {'root': root, 'image': image, 'folder': folder, 'video': video}


def check_face(face):
    assert len(face['box']) == 4 and face['box'][0] < face['box'][2]
    assert 0.9 <= face['detection_score'] <= 1.0
    for task in labels.TASKS:
        result = face[task]
        assert set(result) >= {'label', 'confidence', 'probabilities'}
        assert list(result['probabilities']) == list(labels.CLASSES[task])
        assert result['label'] in labels.CLASSES[task]
        assert sum(result['probabilities'].values()) == pytest.approx(1.0, abs=2e-3)
    assert 'years' in face['age']


def test_json_lines_for_an_image_a_folder_and_a_video(media, tmp_path):
    annotated = tmp_path / 'annotated'
    result = run_cli(media['image'], media['folder'], media['video'], '--json',
                     '--every-n-frames', '2', '--save-annotated', annotated, *MODEL_ARGS)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_source = {}
    for record in records:
        assert set(record) == {'source', 'frame', 'time_s', 'width', 'height', 'faces',
                               'timings_ms'}
        assert set(record['timings_ms']) == {'detect', 'crop', 'classify'}
        by_source.setdefault(os.path.basename(record['source']), []).append(record)
        for face in record['faces']:
            check_face(face)
    assert sorted(by_source) == ['a_two_faces.png', 'astronaut.jpg', 'b_no_face.png',
                                 'clip.mp4']
    (astronaut,) = by_source['astronaut.jpg']
    assert astronaut['frame'] is None and (astronaut['width'], astronaut['height']) == (512, 512)
    assert len(astronaut['faces']) == 1
    assert sample_data.box_iou(astronaut['faces'][0]['box'],
                               sample_data.ASTRONAUT_FACE_BOX) > 0.8
    assert len(by_source['a_two_faces.png'][0]['faces']) == 2
    assert by_source['b_no_face.png'][0]['faces'] == []
    video = by_source['clip.mp4']
    assert [r['frame'] for r in video] == [0, 2]
    assert video[1]['time_s'] == pytest.approx(0.2)
    assert all(len(r['faces']) == 2 for r in video)
    # The corrupt files are reported and skipped; the untrained model is announced.
    assert 'c_broken.jpg' in result.stderr
    assert 'd_damaged.jpg' in result.stderr and 'Corrupt JPEG data' in result.stderr
    assert 'RANDOM' in result.stderr or 'UNTRAINED' in result.stderr
    assert 'notes.txt' not in result.stdout
    written = sorted(p.name for p in annotated.iterdir())
    assert written == ['a_two_faces.png', 'astronaut.jpg', 'b_no_face.png',
                       'clip_annotated.avi']
    assert cv2.imread(str(annotated / 'astronaut.jpg')).shape == (512, 512, 3)
    capture = cv2.VideoCapture(str(annotated / 'clip_annotated.avi'))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == 2


def test_nothing_readable_exits_non_zero(media, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    result = run_cli(media['folder'] / 'c_broken.jpg', tmp_path / 'missing.png', empty,
                     *MODEL_ARGS)
    assert result.returncode == 1
    for name in ('c_broken.jpg', 'missing.png', 'empty'):
        assert name in result.stderr
    assert result.stdout == ''


def test_bad_options_are_usage_errors(media):
    result = run_cli(media['image'], '--every-n-frames', '0', *MODEL_ARGS)
    assert result.returncode == 2 and 'every-n-frames' in result.stderr


@pytest.fixture(scope='module')
def checkpoint_dir(tmp_path_factory):
    """A real checkpoint directory: PE-Core-T (random weights) + linear-probe heads."""
    from soft_biometrics_ros.models.checkpoint import save_checkpoint
    from soft_biometrics_ros.models.multitask import build_multitask_model
    model = build_multitask_model('PE-Core-T-16-384', pretrained='none', method='linear_probe')
    return save_checkpoint(model, tmp_path_factory.mktemp('ckpt') / 'linear_probe')


def test_table_with_a_checkpoint_and_annotated_images(media, checkpoint_dir, tmp_path,
                                                      capsys, caplog):
    annotated = tmp_path / 'annotated'
    # The same name twice: the second annotated copy must not overwrite the first.
    # Backbone and weights source come from the checkpoint (no --backbone/--pretrained).
    status = main([str(media['image']), str(media['image']), '--checkpoint',
                   str(checkpoint_dir), '--save-annotated', str(annotated), '--align',
                   '--no-progress', '--device', 'cpu'])
    assert status == 0
    assert any('RANDOM' in r.getMessage() for r in caplog.records)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 2 * 3
    assert lines[0].startswith(str(media['image'])) and '1 face' in lines[0]
    assert 'age' in lines[1] and 'gender' in lines[1] and 'emotion' in lines[1]
    row = lines[2].split()
    assert row[0] == '0' and row[3] in labels.AGE_GROUPS
    assert any(g in lines[2] for g in labels.GENDERS)
    assert any(e in lines[2] for e in labels.EMOTIONS)
    assert sorted(p.name for p in annotated.iterdir()) == ['astronaut.jpg', 'astronaut_1.jpg']
    drawn = cv2.imread(str(annotated / 'astronaut.jpg'))
    assert drawn.shape == (512, 512, 3)
    assert np.abs(drawn.astype(int) - sample_data.astronaut_bgr()).max() > 100


def test_checkpoint_of_another_backbone_is_a_clear_error(media, checkpoint_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(media['image']), '--checkpoint', str(checkpoint_dir), '--backbone',
              'PE-Core-S-16-384', '--device', 'cpu', '--no-progress'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert 'PE-Core-S-16-384' in err and 'PE-Core-T-16-384' in err
    # The message names the option the user gave, not a configuration they did not write.
    assert '--backbone PE-Core-S-16-384 is not the backbone of --checkpoint' in err
    assert "leave --backbone out (the checkpoint's is used)" in err
    assert 'config says' not in err


def test_a_training_run_folder_as_checkpoint_suggests_its_best_checkpoint(
        media, checkpoint_dir, tmp_path, capsys):
    import shutil
    run = tmp_path / 'run'
    shutil.copytree(checkpoint_dir, run / 'checkpoints' / 'best')
    (run / 'train_log.csv').write_text('step\n1\n')
    with pytest.raises(SystemExit) as exit_info:
        main([str(media['image']), '--checkpoint', str(run), '--device', 'cpu',
              '--no-progress'])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert f'it holds the checkpoint {run / "checkpoints" / "best"}: pass that folder' \
        in captured.err
    assert captured.out == ''  # refused before any input was processed


def test_format_table_lists_each_face():
    rng = np.random.default_rng(0)
    estimates = [FaceEstimate.from_probabilities(
        (10 * i, 5, 10 * i + 40, 60), 0.97,
        {t: rng.dirichlet(np.ones(labels.NUM_CLASSES[t])) for t in labels.TASKS})
        for i in range(3)]
    text = format_table('cam.mp4', 12, estimates, {'detect': 5.0, 'crop': 1.0,
                                                   'classify': 9.0})
    lines = text.splitlines()
    assert lines[0] == 'cam.mp4 [frame 12]: 3 faces (detect 5 ms, crop 1 ms, classify 9 ms)'
    assert len(lines) == 2 + 3
    for i, estimate in enumerate(estimates):
        assert estimate.emotion.label in lines[2 + i] and lines[2 + i].split()[0] == str(i)
    assert format_table('x.png', None, [], {'detect': 1.0}).endswith('0 faces (detect 1 ms)')


def test_a_backbone_prefix_suggests_the_architecture_it_begins(media, capsys):
    # 'PE-Core-T' begins exactly one architecture: that is the suggestion, not the
    # closest spelling (PE-Core-B-16).
    with pytest.raises(SystemExit) as exit_info:
        main([str(media['image']), '--backbone', 'PE-Core-T', '--pretrained', 'none',
              '--device', 'cpu', '--no-progress'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "backbone 'PE-Core-T'" in err and '(did you mean PE-Core-T-16-384?)' in err


def test_video_tracked_per_person_with_a_classification_budget(media):
    result = run_cli(media['video'], '--json', '--track', '--classify-rate-hz', '5',
                     '--max-classify-per-frame', '0', *MODEL_ARGS)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r['frame'] for r in records] == [0, 1, 2]
    assert all(len(r['faces']) == 2 for r in records)
    ids = [sorted(f['face_id'] for f in r['faces']) for r in records]
    assert ids[0] == ids[1] == ids[2]  # the same two people throughout
    # 10 frames/s of video, each face classified at most 5 times a second of video time
    assert [sorted(f['observations'] for f in r['faces']) for r in records] == \
        [[1, 1], [1, 1], [2, 2]]
    assert [sorted(f['attributes_stamp'] for f in r['faces']) for r in records] == \
        [[0.0, 0.0], [0.0, 0.0], [pytest.approx(0.2)] * 2]
    for record in records:
        for face in record['faces']:
            check_face(face)
    bad = run_cli(media['video'], '--track', '--classify-rate-hz', '-1', *MODEL_ARGS)
    assert bad.returncode != 0 and 'classify_rate_hz' in bad.stderr


def test_a_bad_manifest_or_a_file_as_checkpoint_is_one_error_line(
        media, checkpoint_dir, tmp_path, capsys):
    import json
    import shutil
    bad = tmp_path / 'bad'
    shutil.copytree(checkpoint_dir, bad)
    manifest = json.loads((bad / 'manifest.json').read_text())
    manifest['method'] = 'linear_probe'  # a string where an object belongs: was a traceback
    (bad / 'manifest.json').write_text(json.dumps(manifest))
    weights = tmp_path / 'PE-Core-T-16-384.safetensors'
    weights.write_bytes(b'x')
    for checkpoint, expected in ((bad, 'method must be null or an object'),
                                 (weights, 'is a file, not a folder')):
        with pytest.raises(SystemExit) as exit_info:
            main([str(media['image']), '--checkpoint', str(checkpoint), '--device', 'cpu',
                  '--no-progress'])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if 'error:' in line]
        assert len(lines) == 1 and expected in lines[0] and 'Traceback' not in err, err
