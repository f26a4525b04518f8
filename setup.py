"""ament_python build of ldka_ros: the Python package, launch/config files, entry points."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'ldka_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    # The console's page is plain HTML/JS/CSS shipped inside the package (no build step).
    package_data={'ldka_ros.console': ['static/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='ldka_ros maintainers',
    maintainer_email='maintainers@ldka-ros.dev',
    description='Class-incremental semantic segmentation for ROS 2 robots (LDKA).',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'ldka = ldka_ros.cli.main:main',
            'segmentation_node = ldka_ros.nodes.segmentation_node:main',
            'learner_node = ldka_ros.nodes.learner_node:main',
            'sim_camera_node = ldka_ros.nodes.sim_camera_node:main',
            'replay_camera_node = ldka_ros.nodes.replay_camera_node:main',
            'label_console_node = ldka_ros.nodes.label_console_node:main',
        ],
    },
)
