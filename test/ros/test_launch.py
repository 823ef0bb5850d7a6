"""launch/soft_biometrics.launch.py: compiles, imports without launch, declares what it says.

launch/launch_ros are not installable here, so the file is checked by compiling it,
importing it (its module level must not need launch), and reading its syntax tree:
the node it starts must be this package's console script with config/node.yaml, and
the arguments the README promises must be declared and used.
"""

import ast
import importlib.util
import os
import py_compile
import re

import pytest

from conftest import REPO_ROOT

LAUNCH_FILE = REPO_ROOT / 'launch' / 'soft_biometrics.launch.py'


def load_module():
    """Import the launch file as a module (what ros2 launch does first)."""
    spec = importlib.util.spec_from_file_location('soft_biometrics_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compiles(tmp_path):
    py_compile.compile(str(LAUNCH_FILE), cfile=str(tmp_path / 'launch.pyc'), doraise=True)


def test_module_level_import_needs_no_launch():
    module = load_module()
    assert callable(module.generate_launch_description)
    assert set(module.LAUNCH_ARGUMENTS) == {'image', 'device', 'runtime', 'checkpoint',
                                            'backbone', 'pretrained', 'namespace', 'autostart',
                                            'params_file', 'publish_ros4hri', 'face_source'}
    params_file = module.default_params_file()
    assert params_file.endswith('node.yaml')
    assert os.path.isfile(params_file), params_file  # installed, or the checkout's


def test_launch_ros_imports_only_inside_generate_launch_description():
    tree = ast.parse(LAUNCH_FILE.read_text())
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names]
            assert not any(n.split('.')[0] in ('launch', 'launch_ros') for n in names), names


def test_node_action_matches_the_package():
    tree = ast.parse(LAUNCH_FILE.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, 'id', None) == 'Node']
    assert len(calls) == 1
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert ast.literal_eval(keywords['package']) == 'soft_biometrics_ros'
    assert ast.literal_eval(keywords['name']) == 'soft_biometrics'
    executable = ast.literal_eval(keywords['executable'])
    setup_py = (REPO_ROOT / 'setup.py').read_text()
    assert re.search(rf"'{executable} = soft_biometrics_ros\.ros\.node:main'", setup_py)
    # every launch argument is used: through LaunchConfiguration, or as a node parameter
    module = load_module()
    used = {ast.literal_eval(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', None) == 'LaunchConfiguration'}
    assert used | set(module.PARAMETER_ARGUMENTS) == set(module.LAUNCH_ARGUMENTS)
    assert not used & set(module.PARAMETER_ARGUMENTS)
    # the parameters after params_file are the overrides parameter_overrides returns
    parameters = keywords['parameters']
    assert isinstance(parameters, ast.List) and len(parameters.elts) == 2
    assert ast.literal_eval(parameters.elts[0].args[0]) == 'params_file'
    overrides = parameters.elts[1]
    assert isinstance(overrides, ast.DictComp)
    assert ast.unparse(overrides.generators[0].iter) == 'overrides.items()'


def test_parameter_arguments_are_node_parameters_of_their_type():
    from soft_biometrics_ros.ros.parameters import SPECS
    module = load_module()
    assert {'device', 'runtime', 'checkpoint', 'backbone', 'pretrained', 'autostart',
            'publish_ros4hri', 'face_source'} == set(module.PARAMETER_ARGUMENTS)
    for name, kind in module.PARAMETER_ARGUMENTS.items():
        assert type(SPECS[name].default) is kind, name
        assert module.LAUNCH_ARGUMENTS[name][0] == '', name  # empty: params_file's value


def test_empty_parameter_arguments_keep_the_params_file_values():
    overrides = load_module().parameter_overrides
    # The defaults set nothing, so a params_file with e.g. `pretrained: /path` is kept.
    defaults = {name: default for name, (default, _) in load_module().LAUNCH_ARGUMENTS.items()}
    assert overrides(defaults) == {}
    assert overrides({'pretrained': '/models/PE-Core-L-14-336.safetensors', 'backbone': '',
                      'checkpoint': '2024', 'device': 'cpu', 'autostart': 'False'}) == {
        'pretrained': '/models/PE-Core-L-14-336.safetensors', 'checkpoint': '2024',
        'device': 'cpu', 'autostart': False}
    assert overrides({'backbone': 'PE-Core-L-14-336', 'autostart': 'true'}) == {
        'backbone': 'PE-Core-L-14-336', 'autostart': True}
    assert overrides({'publish_ros4hri': 'true', 'face_source': 'ros4hri'}) == {
        'publish_ros4hri': True, 'face_source': 'ros4hri'}
    with pytest.raises(ValueError, match='autostart:=yes must be true or false'):
        overrides({'autostart': 'yes'})


def test_installed_with_the_package():
    setup_py = (REPO_ROOT / 'setup.py').read_text()
    assert "glob('launch/*.launch.py')" in setup_py and "glob('config/*.yaml')" in setup_py
