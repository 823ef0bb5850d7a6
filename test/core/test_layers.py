"""The layers (ARCHITECTURE.md): the core and training import with ROS absent; no circles.

Dependencies point one way: tools -> ros -> core (models, runtime, the top-level
modules); training -> core. Checked on the sources (every import, function-local ones
too) and by importing the core in a Python where every ROS package is unimportable.
"""

import ast
import subprocess
import sys

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / 'soft_biometrics_ros'
ROS_PACKAGES = ('rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs',
                'builtin_interfaces', 'lifecycle_msgs', 'rosgraph_msgs', 'soft_biometrics_msgs',
                'hri_msgs', 'ament_index_python', 'cv_bridge', 'launch', 'launch_ros')
# Layer of a module: its first package below soft_biometrics_ros (core = the rest).
RANK = {'core': 0, 'models': 0, 'runtime': 0, 'ros': 1, 'tools': 2}


def module_name(path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer(name: str) -> str:
    parts = name.split('.')
    if parts[0] == 'training':
        return 'training'
    return parts[1] if len(parts) > 2 and parts[1] in RANK else 'core'


def imports_of(path):
    """Every module `path` imports (module level and inside functions)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f'{node.module}.{alias.name}' for alias in node.names)


def source_graph():
    files = sorted(PACKAGE.rglob('*.py')) + sorted((REPO_ROOT / 'training').rglob('*.py'))
    modules = {module_name(f): f for f in files}
    graph = {name: sorted({i for i in imports_of(path) if i in modules and i != name})
             for name, path in modules.items()}
    external = {name: sorted({i.split('.')[0] for i in imports_of(path)} & set(ROS_PACKAGES))
                for name, path in modules.items()}
    return graph, external


def test_dependencies_point_one_way():
    graph, external = source_graph()
    for name, targets in graph.items():
        for target in targets:
            if layer(name) == 'training':
                assert layer(target) not in ('ros', 'tools'), f'{name} imports {target}'
            else:
                assert layer(target) != 'training', f'{name} imports {target}'
                assert RANK[layer(target)] <= RANK[layer(name)], f'{name} imports {target}'
        if layer(name) not in ('ros', 'tools'):
            assert not external[name], f'{name} imports ROS: {external[name]}'


def test_no_import_circle():
    graph, _ = source_graph()
    graph = {name: [t for t in targets if not name.startswith(t + '.')]  # a parent package
             for name, targets in graph.items()}
    state = {}

    def visit(name, path):
        state[name] = 'open'
        for target in graph[name]:
            if state.get(target) == 'open':
                cycle = path[path.index(target):] + [target]
                raise AssertionError('import circle: ' + ' -> '.join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[name] = 'done'

    for name in graph:
        if name not in state:
            visit(name, [name])


BLOCK_ROS = f'''
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {ROS_PACKAGES!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{{name}} is blocked: no ROS here')
sys.meta_path.insert(0, Blocker())
import soft_biometrics_ros, training
names = []
for package in (soft_biometrics_ros, training):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
        if info.name.split('.')[1] not in ('ros', 'tools'):
            importlib.import_module(info.name)
            names.append(info.name)
print(len(names))
'''


def test_the_core_and_training_import_with_ros_absent():
    proc = subprocess.run([sys.executable, '-c', BLOCK_ROS], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) > 30
