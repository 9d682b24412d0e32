"""The native core, wired to its one source of zone rules.

`new_core()` gives a `tally._native.Core` whose period bounds come from
tally/core/periods.py. Per batch: `core.decode(values, now, limits)` gives the
events, rejections and dedup digests; the caller drops duplicates; then
`core.apply(deltas, batch, duplicates)` accumulates the rest into a
`Deltas(core)`. `aggregate` and `merged` do that without dedup, for tests and
benches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tally._native import Batch, Core, Deltas, Limits, member_copy
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tally.core.periods import native_bounds

__all__ = ["Batch", "Core", "Deltas", "Limits", "aggregate", "member_copy", "merged", "new_core"]


def new_core(index: MetricIndex | None = None) -> Core:
    core = Core(native_bounds)
    if index is not None:
        core.set_metrics(index.specs)
    return core


def aggregate(
    core: Core,
    values: Sequence[bytes | None],
    now: float,
    limits: DecodeLimits,
    deltas: Deltas | None = None,
) -> Deltas:
    """Decode and apply every value (no dedup); errors raise."""
    deltas = deltas if deltas is not None else Deltas(core)
    batch = core.decode(list(values), now, limits.native())
    failed = core.apply(deltas, batch, bytes(len(batch)))
    if failed:
        raise RuntimeError(f"events raised inside the core: {failed}")
    return deltas


def merged(core: Core, parts: Iterable[Deltas]) -> Deltas:
    total = Deltas(core)
    for part in parts:
        total.merge(part)
    return total
