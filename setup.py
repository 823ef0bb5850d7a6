"""ament_python package soft_biometrics_ros: the node, the runtime library and training."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'soft_biometrics_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['soft_biometrics_ros', 'soft_biometrics_ros.*',
                                    'training', 'training.*']),
    package_data={'soft_biometrics_ros': ['data/*', 'config/*.yaml']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
        ('share/' + package_name + '/config/train', glob('config/train/*.yaml')),
        ('share/' + package_name + '/fastdds', glob('fastdds/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='soft_biometrics_ros maintainers',
    maintainer_email='maintainers@soft-biometrics-ros.org',
    description='Per-face age group, gender and emotion for social robots (PE-Core).',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'soft_biometrics_node = soft_biometrics_ros.ros.node:main',
            'soft_biometrics_predict = soft_biometrics_ros.tools.predict:main',
            'soft_biometrics_eval = soft_biometrics_ros.tools.bag_eval:main',
            'soft_biometrics_replay = soft_biometrics_ros.tools.replay:main',
            'soft_biometrics_record_sample = soft_biometrics_ros.tools.record_sample:main',
            'soft_biometrics_bench = soft_biometrics_ros.tools.bench.cli:main',
        ],
    },
)
