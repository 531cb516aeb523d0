"""Counters, failure causes and response-time histograms, mergeable across processes.

A histogram is a flat list of counts over log-linear buckets (32 sub-buckets per power
of two, so a bucket is at most ~3% wide): recording is a ``bit_length`` and an index,
merging is element-wise addition, and percentiles come from a cumulative walk. Values
are microseconds.

``Stats.series`` holds one row per second of the run - the counters' deltas and a
sparse histogram of the primary response time - for the live line and the HTML charts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUB_BITS = 5
SUB = 1 << SUB_BITS
NBUCKETS = SUB * 36          # up to 2**36 us (19 hours) - anything longer is clamped


def bucket_of(us: int) -> int:
    if us < SUB * 2:
        return us if us > 0 else 0
    shift = us.bit_length() - SUB_BITS - 1
    i = ((shift + 1) << SUB_BITS) + (us >> shift) - SUB
    return i if i < NBUCKETS else NBUCKETS - 1


def bucket_value(i: int) -> int:
    """The middle of bucket ``i`` in microseconds."""
    if i < SUB * 2:
        return i
    shift = (i >> SUB_BITS) - 1
    low = ((i & (SUB - 1)) + SUB) << shift
    return low + ((1 << shift) >> 1)


class Histogram:
    __slots__ = ("counts", "n", "total", "max")

    def __init__(self) -> None:
        self.counts = [0] * NBUCKETS
        self.n = 0
        self.total = 0
        self.max = 0

    def record(self, seconds: float) -> int:
        """Count one value; return its bucket (the per-second window keeps it too)."""
        us = int(seconds * 1e6)
        if us < SUB * 2:
            i = us if us > 0 else 0
        else:
            shift = us.bit_length() - SUB_BITS - 1
            i = ((shift + 1) << SUB_BITS) + (us >> shift) - SUB
            if i >= NBUCKETS:
                i = NBUCKETS - 1
        self.counts[i] += 1
        self.n += 1
        self.total += us
        if us > self.max:
            self.max = us
        return i

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> int:
        """The ``p``-th percentile in microseconds (0 when empty)."""
        return percentile_of(self.counts, self.n, p, self.max)

    def summary(self) -> dict[str, float]:
        """Milliseconds: what the table, JSON and HTML show."""
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "mean": self.total / self.n / 1e3,
                "p50": self.percentile(50) / 1e3, "p90": self.percentile(90) / 1e3,
                "p99": self.percentile(99) / 1e3, "max": self.max / 1e3}

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "max": self.max,
                "buckets": {str(i): c for i, c in enumerate(self.counts) if c}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        h = cls()
        h.n, h.total, h.max = d["n"], d["total"], d["max"]
        for i, c in d["buckets"].items():
            h.counts[int(i)] = c
        return h


def percentile_of(counts: list[int] | dict[int, int], n: int, p: float, cap: int = 0) -> int:
    if n <= 0:
        return 0
    rank = max(1, int(n * p / 100.0 + 0.999999))
    seen = 0
    items = sorted(counts.items()) if isinstance(counts, dict) else enumerate(counts)
    for i, c in items:
        if c:
            seen += c
            if seen >= rank:
                v = bucket_value(i)
                return min(v, cap) if cap else v
    return cap


def sparse_percentile(sparse: dict[int, int], p: float) -> int:
    return percentile_of(sparse, sum(sparse.values()), p)


@dataclass(slots=True)
class Stats:
    """Everything one generator process measured; ``merge`` adds another process's."""

    scenario: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    causes: dict[str, int] = field(default_factory=dict)
    hists: dict[str, Histogram] = field(default_factory=dict)
    # per second: {"t": s, counter deltas..., "lat": {bucket: count}}
    series: list[dict[str, Any]] = field(default_factory=list)
    primary: str = ""            # the histogram the live line and the charts follow
    cpu: float = 0.0             # generator CPU seconds (user + system), all processes
    wall: float = 0.0            # seconds of load (start of traffic to end of drain)
    procs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def hist(self, name: str) -> Histogram:
        h = self.hists.get(name)
        if h is None:
            h = self.hists[name] = Histogram()
        return h

    def fail(self, cause: str, n: int = 1) -> None:
        self.causes[cause] = self.causes.get(cause, 0) + n

    def merge(self, other: Stats) -> None:
        for k, v in other.counters.items():
            self.counters[k] = self.counters.get(k, 0) + v
        for k, v in other.causes.items():
            self.causes[k] = self.causes.get(k, 0) + v
        for k, h in other.hists.items():
            self.hist(k).merge(h)
        by_t = {row["t"]: row for row in self.series}
        for row in other.series:
            mine = by_t.get(row["t"])
            if mine is None:
                by_t[row["t"]] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in row.items()}
                continue
            for k, v in row.items():
                if k == "t":
                    continue
                if isinstance(v, dict):
                    lat = mine.setdefault(k, {})
                    for b, c in v.items():
                        lat[b] = lat.get(b, 0) + c
                else:
                    mine[k] = mine.get(k, 0) + v
        self.series = [by_t[t] for t in sorted(by_t)]
        self.cpu += other.cpu
        self.wall = max(self.wall, other.wall)
        self.primary = self.primary or other.primary
        self.scenario = self.scenario or other.scenario
        for k, v in other.extra.items():
            mine = self.extra.get(k)
            if k == "load_seconds" and isinstance(mine, (int, float)):
                self.extra[k] = max(mine, v)
            elif isinstance(v, (int, float)) and isinstance(mine, (int, float)):
                self.extra[k] = mine + v
            else:
                self.extra.setdefault(k, v)

    @property
    def failed(self) -> int:
        return sum(self.causes.values())

    @property
    def units(self) -> int:
        """Everything started: the scenario's units plus mixed's registrations."""
        return self.counters.get("started", 0) + self.counters.get("reg_started", 0)

    def failure_ratio(self) -> float:
        units = self.units
        return self.failed / units if units else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "counters": self.counters, "causes": self.causes,
                "hists": {k: h.to_dict() for k, h in self.hists.items()},
                "series": [{k: ({str(b): c for b, c in v.items()} if isinstance(v, dict) else v)
                            for k, v in row.items()} for row in self.series],
                "primary": self.primary, "cpu": self.cpu, "wall": self.wall, "procs": self.procs,
                "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        series = [{k: ({int(b): c for b, c in v.items()} if isinstance(v, dict) else v)
                   for k, v in row.items()} for row in d["series"]]
        return cls(scenario=d["scenario"], counters=dict(d["counters"]), causes=dict(d["causes"]),
                   hists={k: Histogram.from_dict(h) for k, h in d["hists"].items()},
                   series=series, primary=d["primary"], cpu=d["cpu"], wall=d["wall"],
                   procs=d.get("procs", 1), extra=dict(d.get("extra", {})))
