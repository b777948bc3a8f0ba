"""Progress bars (tqdm) with rate and ETA, quiet where they should be."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress(
    total: int, desc: str = "", initial: int = 0, enabled: bool = True, unit: str = "batch"
):
    """A tqdm bar on stderr; disabled when ``enabled`` is False or env GLS_NP_PROGRESS=0."""
    if os.environ.get("GLS_NP_PROGRESS", "1") == "0":
        enabled = False
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )
