"""The ROS-free runtime: face detection, crops, the batched pipeline, tracking, estimates.

Everything a frame goes through between decoding and publishing, as plain Python that
tests, the command-line tools and the node share.
"""
