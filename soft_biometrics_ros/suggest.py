"""'Did you mean ...?' for names a user typed: one rule for backbones, config keys, methods.

Light on purpose (no torch): the training configuration imports it before any model.
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional

__all__ = ['suggest_name']


def suggest_name(name: str, candidates: Iterable[str]) -> Optional[str]:
    """Return the candidate `name` most likely means, or None.

    A candidate equal to `name` but for case, then the only candidate that `name` is a
    prefix of (``PE-Core-T`` -> ``PE-Core-T-16-384``; case-sensitive first, then not;
    None when `name` begins several), then the closest by string similarity.
    """
    candidates = list(candidates)
    folded = name.casefold()
    for matches in ([c for c in candidates if c.casefold() == folded],
                    [c for c in candidates if name and c.startswith(name)],
                    [c for c in candidates if name and c.casefold().startswith(folded)]):
        if matches:
            return matches[0] if len(matches) == 1 else None
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None
