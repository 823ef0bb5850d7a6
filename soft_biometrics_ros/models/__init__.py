"""The models: PE-Core backbone, task heads, adaptation methods, checkpoints, zero-shot.

ROS-free. `factory.create_classifier` is the one place that decides what a caller runs
(a trained checkpoint or the zero-shot CLIP classifier, which backbone, which weights).
"""
