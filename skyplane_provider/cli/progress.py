"""Progress display for long CLI work: a tqdm bar on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from skyplane_provider.transfer.stats import Progress


@contextmanager
def progress_printer(enabled: bool = True, every: float = 5.0) -> Iterator[Callable[[Progress], None]]:
    """Yield a callback for :class:`Progress` snapshots that draws them on stderr."""
    if not enabled:
        yield lambda p: None
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="transfer")

        def draw(p: Progress) -> None:
            bar.total = p.bytes_total
            bar.n = p.bytes_done
            bar.set_postfix_str(f"{p.objects_done}/{p.objects_total} objects, {p.retries} retries", refresh=False)
            bar.refresh()

        try:
            yield draw
        finally:
            bar.close()
        return
    last = [0.0]

    def line(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= every or p.bytes_done == p.bytes_total:
            last[0] = now
            print(p.line(), file=sys.stderr, flush=True)

    yield line
