"""Histograms, percentiles and merging of what several generator processes saw."""

from __future__ import annotations

import random

from loadtest.stats import Histogram, Stats, bucket_of, bucket_value, sparse_percentile


def test_buckets_are_monotonic_and_within_three_percent():
    prev = -1
    for us in list(range(0, 5000)) + [10**k + j for k in range(4, 11) for j in (0, 1, 7)]:
        i = bucket_of(us)
        assert i >= prev
        prev = i
        assert abs(bucket_value(i) - us) <= max(1, us * 0.032)


def test_percentiles_of_a_known_distribution():
    h = Histogram()
    for ms in range(1, 1001):              # 1..1000 ms, one each
        h.record(ms / 1000)
    s = h.summary()
    assert s["n"] == 1000
    assert abs(s["p50"] - 500) < 500 * 0.035
    assert abs(s["p90"] - 900) < 900 * 0.035
    assert abs(s["p99"] - 990) < 990 * 0.035
    assert s["max"] == 1000.0
    assert Histogram().summary() == {"n": 0}


def test_merge_equals_recording_everything_in_one():
    rnd = random.Random(7)
    values = [rnd.expovariate(100) for _ in range(5000)]
    one, a, b = Histogram(), Histogram(), Histogram()
    for i, v in enumerate(values):
        one.record(v)
        (a if i % 2 else b).record(v)
    a.merge(b)
    assert a.counts == one.counts and a.n == one.n and a.max == one.max
    assert Histogram.from_dict(one.to_dict()).counts == one.counts


def test_stats_merge_adds_counters_causes_series_and_cpu():
    x = Stats(scenario="register", primary="register")
    y = Stats(scenario="register", primary="register")
    x.counters.update(started=10, ok=8)
    y.counters.update(started=5, ok=5, reg_started=2)
    x.fail("REGISTER timeout", 2)
    y.fail("REGISTER timeout")
    y.fail("REGISTER 403 Forbidden")
    x.hist("register").record(0.01)
    y.hist("register").record(0.02)
    x.series = [{"t": 0, "started": 5, "lat": {10: 1}}, {"t": 1, "started": 5, "lat": {}}]
    y.series = [{"t": 1, "started": 3, "lat": {10: 2}}, {"t": 2, "started": 2}]
    x.cpu, y.cpu, x.wall, y.wall = 1.0, 0.5, 10.0, 11.0
    x.merge(Stats.from_dict(y.to_dict()))
    assert x.counters == {"started": 15, "ok": 13, "reg_started": 2}
    assert x.causes == {"REGISTER timeout": 3, "REGISTER 403 Forbidden": 1}
    assert x.failed == 4 and x.units == 17
    assert abs(x.failure_ratio() - 4 / 17) < 1e-9
    assert x.hist("register").n == 2
    assert [r["t"] for r in x.series] == [0, 1, 2]
    assert x.series[1]["started"] == 8 and x.series[1]["lat"] == {10: 2}
    assert (x.cpu, x.wall) == (1.5, 11.0)
    assert sparse_percentile({10: 1, 20: 99}, 50) == bucket_value(20)
