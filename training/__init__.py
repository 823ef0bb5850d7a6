"""Offline training of soft_biometrics_ros: data, sampling, adaptation methods, evaluation.

Run ``python -m training <stats|train|evaluate|zero-shot|compare|export> --config FILE
[key.path=value ...]`` (see training/cli.py; keys in training/config.py).
"""
