"""The persons bench: real PE-Core-T, real MTCNN, the node's per-frame path, both variants.

Speed is never asserted: the test checks that each variant measures something real and
what only the budget's rules decide (a new face answered, classified, in its first frame;
at most the budget per frame), and that the JSON reports the detection settings.
"""

import pytest

from soft_biometrics_ros.tools.bench import persons


@pytest.fixture(scope='module')
def result():
    cfg = persons.PersonsConfig(frame=(320, 240), faces=(1, 2), detection_scale=0.5,
                                min_face_size=40, steady_s=0.5, appearances=1, rounds=1)
    return persons.bench_persons(cfg)


def test_both_variants_measure_answers_refresh_and_new_faces(result):
    assert set(result['results']) == {'1_faces', '2_faces'}
    for entry in result['results'].values():
        for name in ('budget', 'every_frame'):
            variant = entry[name]
            assert variant['answers_per_s'] > 0 and variant['frame_ms']['median'] > 0
            new = variant['new_face']
            # a face appearing beside tracked ones: classified in its first frame
            assert new['n'] == 1 and new['max_frames_late'] == 0
            assert new['min_observations'] >= 1 and new['median_ms'] > 0
        assert entry['every_frame']['refresh_hz']['min'] > 0  # every face, every frame
        assert entry['every_frame']['scene_appears']['max_frames_late'] == 0
        assert set(entry['ratio_budget_to_every_frame']) == {'answers_per_s', 'refresh_hz'}
    # two faces appearing at once with a budget of one a frame: the second waits a frame
    assert result['results']['2_faces']['budget']['scene_appears']['max_frames_late'] == 1
    assert result['detection'] == {'detection_scale': 0.5, 'min_face_size': 40,
                                   'frame': [320, 240]}
    assert result['budget'] == {'classify_rate_hz': 2.0, 'max_classify_per_frame': 1}
    assert 'faces' in persons.format_table(result)


def test_hide_face_paints_the_box_out():
    from soft_biometrics_ros.tools.bench.frames import synthetic_frame
    frame = synthetic_frame(1, (320, 240))
    hidden = persons.hide_face(frame, (100, 60, 200, 180))
    assert (hidden[120, 150] == hidden[100, 110]).all()
    assert (hidden[0, 0] == frame[0, 0]).all()


def test_cli_rejects_a_bad_budget(capsys):
    with pytest.raises(SystemExit) as exit_info:
        persons.main(['--classify-rate-hz', '-1'])
    assert exit_info.value.code == 2
    assert 'classify_rate_hz' in capsys.readouterr().err
