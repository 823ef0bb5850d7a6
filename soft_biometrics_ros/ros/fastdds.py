"""The shipped Fast DDS profile for frames larger than Fast DDS's 512 KiB default segment.

Fast DDS (ROS 2's default middleware) drops best-effort samples larger than its
shared-memory segment between processes on one machine, silently: any 640x480 bgr8
frame (900 KiB). `fastdds/large_frames.xml` raises the segment; the publishing process
must use it. Fast DDS reads the profile's path from an environment variable whose name
changed: Fast DDS 3 (Kilted) reads FASTDDS_DEFAULT_PROFILES_FILE (and the old name with a
deprecation warning), Fast DDS 2.14 (Jazzy, Humble) only FASTRTPS_DEFAULT_PROFILES_FILE.
`use_large_frames_profile` sets the one the installed Fast DDS reads (both when it
cannot tell).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping, Optional, Tuple

# Newest name first; every Fast DDS since 2.0 reads one of them.
PROFILE_ENVS: Tuple[str, ...] = ('FASTDDS_DEFAULT_PROFILES_FILE',
                                 'FASTRTPS_DEFAULT_PROFILES_FILE')
PROFILE_NAME = 'large_frames.xml'


def large_frames_profile() -> Optional[Path]:
    """Return the shipped profile (in the installed share folder, or in the sources)."""
    candidates = []
    try:
        from ament_index_python.packages import (PackageNotFoundError,
                                                 get_package_share_directory)
        try:
            candidates.append(Path(get_package_share_directory('soft_biometrics_ros')))
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    candidates.append(Path(__file__).resolve().parents[2])
    for root in candidates:
        path = root / 'fastdds' / PROFILE_NAME
        if path.is_file():
            return path
    return None


def profile_variables() -> Tuple[str, ...]:
    """Return the profile variable(s) the installed Fast DDS reads.

    Told by the library beside rmw_fastrtps (libfastdds: Fast DDS 3; libfastrtps: 2.x);
    both names when it cannot be told.
    """
    try:
        from ament_index_python.packages import get_package_prefix
        lib = Path(get_package_prefix('rmw_fastrtps_shared_cpp')) / 'lib'
    except (ImportError, LookupError, ValueError):
        return PROFILE_ENVS
    if any(lib.glob('libfastdds.so*')):
        return PROFILE_ENVS[:1]
    if any(lib.glob('libfastrtps.so*')):
        return PROFILE_ENVS[1:]
    return PROFILE_ENVS


def configured_profile(environ: MutableMapping[str, str] = os.environ) -> Optional[str]:
    """Return the profile file the environment names (either variable), or None."""
    return next((environ[name] for name in PROFILE_ENVS if environ.get(name)), None)


def use_large_frames_profile(environ: MutableMapping[str, str] = os.environ) -> Optional[str]:
    """Make the installed Fast DDS read the large-frames profile, unless one is chosen.

    A profile the user named under either variable is given to the one the installed
    Fast DDS reads (a Jazzy user who exports only FASTDDS_DEFAULT_PROFILES_FILE would
    otherwise lose large frames). With none named, that variable points at the shipped
    profile. Must run before rclpy.init. Returns the profile now in effect, or None
    (another middleware, or no profile found).
    """
    if 'fastrtps' not in environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp'):
        return None
    chosen = configured_profile(environ)
    if chosen is None:
        path = large_frames_profile()
        if path is None:
            return None
        chosen = str(path)
    for name in profile_variables():
        environ.setdefault(name, chosen)
    return chosen
