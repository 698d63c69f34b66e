"""Running a hypothesis fuzzer deterministically and recording what it saw (for docs/reliability.md)."""

from __future__ import annotations

import collections
import time
from typing import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .reliability_report import record

#: Derandomized and without an example database, so every run (and CI) tries the same inputs.
FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=20)


def fuzz(name: str, strategy: st.SearchStrategy, check: Callable[[object], str], *, examples: int,
         what: str) -> collections.Counter:
    """Run ``check`` on ``examples`` inputs drawn from ``strategy``. ``check`` asserts what must
    hold and returns a short name of the outcome; the split of outcomes becomes one report row."""
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()

    @settings(FUZZ, max_examples=examples)
    @given(strategy)
    def run(x) -> None:
        outcomes[check(x)] += 1

    run()
    split = ", ".join(f"{n} {k}" for k, n in outcomes.most_common())
    record("fuzz", f"{name}: {sum(outcomes.values())} inputs ({what})",
           f"{split}; nothing else raised; {time.monotonic() - started:.1f} s in all")
    return outcomes
