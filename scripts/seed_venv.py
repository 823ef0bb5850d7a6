"""Seed a new virtual environment from another one by hard-linking identical packages.

    python scripts/seed_venv.py SOURCE_VENV TARGET_VENV REQUIREMENTS...

Run with any Python >= 3.8 (the Makefile uses the source venv's). The target venv must
exist (python -m venv). Which distributions are linked: every one that the requirement
files pin (`name==version`, `-r` followed) at the version installed in SOURCE, and, from
those, the dependencies SOURCE resolved for them (Requires-Dist, markers evaluated) that
satisfy the requirement and that the files do not pin to another version. Their files
(the dist's RECORD) are hard-linked (copied across file systems); console scripts are
copied with their `#!` line pointing at TARGET's python. Nothing else is touched: pip
must still install the requirement files into TARGET afterwards, which then verifies
the seeded set and installs what is missing or pinned differently (numpy, ROS wheels).
Saves minutes and about 1.5 GB for torch & co. Idempotent: a dist already in TARGET is
left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement


def canonical(name: str) -> str:
    """Return the PEP 503 normalised distribution name."""
    return re.sub(r'[-_.]+', '-', name).lower()


def read_pins(path: Path, pins: dict) -> dict:
    """Collect `name==version` pins of a requirements file (following `-r`)."""
    for raw in path.read_text().splitlines():
        line = raw.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith(('-r ', '--requirement ')):
            read_pins(path.parent / line.split(None, 1)[1], pins)
            continue
        if line.startswith('-'):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        exact = [s.version for s in req.specifier if s.operator == '==']
        if exact:
            pins[canonical(req.name)] = exact[0]
    return pins


def site_packages(venv: Path) -> Path:
    """Return the venv's site-packages folder."""
    found = sorted(venv.glob('lib/python3*/site-packages'))
    if not found:
        raise SystemExit(f'seed_venv: no site-packages under {venv}')
    return found[0]


def select(source: dict, pins: dict) -> list:
    """Choose what to link: the pinned distributions at the same version + their deps."""
    env = default_environment()
    todo = [n for n, v in pins.items() if n in source and source[n].version == v]
    chosen = set()
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        chosen.add(name)
        for spec in source[name].requires or ():
            try:
                req = Requirement(spec)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate(dict(env, extra='')):
                continue
            dep = canonical(req.name)
            if dep not in source or dep in chosen:
                continue
            version = source[dep].version
            if dep in pins and pins[dep] != version:
                continue
            if req.specifier.contains(version, prereleases=True):
                todo.append(dep)
    return sorted(chosen)


def link_dist(dist, src_site: Path, dst_site: Path, src_venv: Path, dst_venv: Path) -> int:
    """Link (or copy) one distribution's files into the target; return the file count."""
    count = 0
    src_bin = (src_venv / 'bin').resolve()
    for entry in dist.files or ():
        src = (src_site / entry).resolve()
        if not src.is_file():
            continue  # RECORD lists files that may be absent (e.g. .pyc never written)
        try:
            relative = src.relative_to(src_venv)
        except ValueError:
            continue  # outside the venv: leave it to pip
        dst = dst_venv / relative
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.parent == src_bin:
            data = src.read_bytes()
            first, _, rest = data.partition(b'\n')
            if first.startswith(b'#!') and str(src_venv).encode() in first:
                first = b'#!' + str(dst_venv / 'bin' / 'python').encode()
                dst.write_bytes(first + b'\n' + rest)
                shutil.copymode(src, dst)
                count += 1
                continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        count += 1
    return count


def main(argv=None) -> int:
    """Seed TARGET from SOURCE for the given requirement files."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    src_venv, dst_venv = Path(args[0]).resolve(), Path(args[1]).absolute()
    src_site, dst_site = site_packages(src_venv), site_packages(dst_venv)
    pins = {}
    for name in args[2:]:
        read_pins(Path(name), pins)
    source = {canonical(d.metadata['Name']): d
              for d in metadata.distributions(path=[str(src_site)])}
    present = {canonical(d.metadata['Name'])
               for d in metadata.distributions(path=[str(dst_site)])}
    started = time.monotonic()
    names = [n for n in select(source, pins) if n not in present]
    files = 0
    for index, name in enumerate(names, 1):
        files += link_dist(source[name], src_site, dst_site, src_venv, dst_venv)
        if sys.stdout.isatty():
            print(f'\rseed_venv: {index}/{len(names)} packages', end='', flush=True)
    print(f'\rseed_venv: {len(names)} packages ({files} files) linked from {src_venv} '
          f'into {dst_venv} in {time.monotonic() - started:.1f} s; pip checks the rest')
    return 0


if __name__ == '__main__':
    sys.exit(main())
