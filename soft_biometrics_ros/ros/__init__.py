"""The ROS 2 adapters: every module of the package that imports ROS lives here.

The node (a thin lifecycle shell), its parameters, message and image conversion,
/diagnostics and rosbag I/O. They call the ROS-free core (`models`, `runtime`).
"""
