"""The command-line tools: predict, bag evaluation, replay, record_sample, demo, bench.

Each is one module (or sub-package) with a `main`; setup.py maps the console scripts
(`soft_biometrics_predict`, ...) onto them.
"""
