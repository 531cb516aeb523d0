"""Output: the live one-line progress display, the final table, ``--json`` (orjson,
every figure) and ``--report`` (one self-contained HTML page with inline SVG charts of
the rate and of the response-time percentiles over time - no plotting dependency)."""

from __future__ import annotations

import datetime
import html
import sys
from typing import IO, Any

import orjson

from loadtest.stats import Stats, sparse_percentile


class LiveLine:
    """Rewrites one status line per second on a terminal; plain lines every
    ``every`` seconds when stderr is not one."""

    def __init__(self, unit: str, out: IO[str] | None = None, every: int = 10) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.unit = unit
        self.every = every
        self.ok = 0
        self.failed = 0
        self.started = 0

    def __call__(self, row: dict[str, Any]) -> None:
        self.ok += row.get("ok", 0) + row.get("reg_ok", 0)
        self.failed += row.get("failed", 0)
        self.started += row.get("started", 0) + row.get("reg_started", 0)
        if not self.tty and (row["t"] + 1) % self.every:
            return
        lat = row.get("lat") or {}
        p99 = sparse_percentile(lat, 99) / 1e3 if lat else 0.0
        pct = 100.0 * self.failed / self.started if self.started else 0.0
        line = (f"t={row['t'] + 1:>4}s  rate {row.get('started', 0):>6}/s  up {row.get('up', 0):>6}  "
                f"ok {self.ok:>8}  failed {self.failed:>6} ({pct:.2f}%)  "
                f"retrans {row.get('retransmissions', 0):>5}/s  p99 {p99:8.2f} ms")
        if row.get("reg_started"):
            line += f"  reg {row['reg_started']}/s"
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def summary(stats: Stats) -> dict[str, Any]:
    """The headline figures, computed once for the table, the JSON and the HTML."""
    c = stats.counters
    units = stats.units
    load = stats.extra.get("load_seconds") or stats.wall or 1e-9
    ok = c.get("ok", 0) + c.get("reg_ok", 0)
    out: dict[str, Any] = {
        "scenario": stats.scenario, "procs": stats.procs, "seconds": round(load, 3),
        "drain_seconds": round(max(0.0, stats.wall - load), 3),
        "target_rate": stats.extra.get("target_rate"),
        "units": units, "ok": ok, "failed": stats.failed,
        "failure_ratio": stats.failure_ratio(),
        # both per second of load: what was started, and what completed well
        "rate": units / load, "goodput": ok / load,
        "retransmissions": c.get("retransmissions", 0),
        "generator_cpu_s": round(stats.cpu, 4),
        "generator_cpu_us_per_unit": stats.cpu / units * 1e6 if units else 0.0,
    }
    rtp_sent = c.get("rtp_sent", 0)
    if rtp_sent:
        out["rtp_loss_ratio"] = c.get("rtp_lost", 0) / rtp_sent
    return out


def to_json(stats: Stats, extra: dict[str, Any] | None = None) -> bytes:
    doc = {"summary": summary(stats),
           "latency_ms": {k: h.summary() for k, h in sorted(stats.hists.items())},
           "causes": dict(sorted(stats.causes.items(), key=lambda kv: -kv[1])),
           "counters": dict(sorted(stats.counters.items())),
           "series": [{k: v for k, v in row.items() if k != "lat"} | _row_pcts(row)
                      for row in stats.series],
           "stats": stats.to_dict()}
    if extra:
        doc.update(extra)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


def _row_pcts(row: dict[str, Any]) -> dict[str, float]:
    lat = row.get("lat") or {}
    if not lat:
        return {}
    return {f"p{p}_ms": sparse_percentile(lat, p) / 1e3 for p in (50, 90, 99)}


def table(stats: Stats) -> str:
    s = summary(stats)
    lines = [
        f"scenario {s['scenario']}: {s['units']} started in {s['seconds']:.1f} s "
        f"({s['rate']:.1f}/s, target {s['target_rate']}/s) over {s['procs']} process(es), "
        f"{s['drain_seconds']:.1f} s to drain",
        f"  ok {s['ok']}  failed {s['failed']} ({100 * s['failure_ratio']:.3f}%)  "
        f"goodput {s['goodput']:.1f}/s  retransmissions {s['retransmissions']}",
        f"  generator CPU {s['generator_cpu_s']:.2f} s = "
        f"{s['generator_cpu_us_per_unit']:.0f} us per unit",
    ]
    c = stats.counters
    if c.get("reg_started"):
        load = s["seconds"] or 1e-9
        lines.append(f"  of which calls {c.get('started', 0)} ({c.get('started', 0) / load:.1f}/s, "
                     f"{c.get('ok', 0)} ok) and registrations {c['reg_started']} "
                     f"({c['reg_started'] / load:.1f}/s, {c.get('reg_ok', 0)} ok)")
    lines += [
        "",
        f"  {'response time (ms)':<24}{'n':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}",
    ]
    for name, h in sorted(stats.hists.items()):
        if not h.n:
            continue
        d = h.summary()
        lines.append(f"  {name:<24}{d['n']:>9}{d['p50']:>9.2f}{d['p90']:>9.2f}"
                     f"{d['p99']:>9.2f}{d['max']:>9.2f}")
    if stats.causes:
        lines += ["", "  failures by cause"]
        for cause, n in sorted(stats.causes.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>9}  {cause}")
    notes = [f"{k} {c[k]}" for k in ("stray", "final_retransmissions", "skipped", "limited",
                                      "send_errors", "uas_retransmissions", "uas_no_ack",
                                      "uas_bye_before_ack", "uas_unknown", "rtp_sent",
                                      "rtp_received", "rtp_lost")
             if c.get(k)]
    if notes:
        lines += ["", "  " + "  ".join(notes)]
    return "\n".join(lines) + "\n"


# -- HTML ---------------------------------------------------------------------------------

W, H, PAD_L, PAD_B, PAD_T, PAD_R = 760, 240, 56, 28, 14, 16
COLORS = ("#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd")


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    m = 1.0
    while m * 10 <= v:
        m *= 10
    while m > v:
        m /= 10
    for k in (1, 2, 2.5, 5, 10):
        if m * k >= v:
            return m * k
    return m * 10


def svg_chart(title: str, xs: list[float], lines: list[tuple[str, list[float]]], unit: str,
              x_unit: str = "s") -> str:
    """One line chart as inline SVG: axes, 5 gridlines, a legend."""
    xmax = max(xs) if xs else 1.0
    ymax = _nice_max(max((max(v) for _, v in lines if v), default=1.0))
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x / xmax if xmax else 0) * pw

    def py(y: float) -> float:
        return PAD_T + ph - (y / ymax) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}">',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for i in range(6):
        y = ymax * i / 5
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                   f'stroke="#e4e4e4"/><text x="{PAD_L - 4}" y="{py(y) + 4:.1f}" '
                   f'text-anchor="end" font-size="11">{y:g}</text>')
    for i in range(6):
        x = xmax * i / 5
        out.append(f'<text x="{px(x):.1f}" y="{H - 10}" text-anchor="middle" '
                   f'font-size="11">{x:.0f}{html.escape(x_unit)}</text>')
    out.append(f'<text x="10" y="{PAD_T + ph / 2:.0f}" font-size="11" '
               f'transform="rotate(-90 10 {PAD_T + ph / 2:.0f})" text-anchor="middle">'
               f'{html.escape(unit)}</text>')
    for n, (name, ys) in enumerate(lines):
        color = COLORS[n % len(COLORS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        if pts:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>')
        out.append(f'<rect x="{PAD_L + 10 + n * 130}" y="{PAD_T + 6}" width="10" height="10" '
                   f'fill="{color}"/><text x="{PAD_L + 24 + n * 130}" y="{PAD_T + 15}" '
                   f'font-size="12">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; }
td, th { border: 1px solid #ddd; padding: 3px 10px; text-align: right; font-size: 13px; }
th { text-align: left; background: #f4f4f4; }
td:first-child { text-align: left; }
code { background: #f4f4f4; padding: 2px 4px; }
"""


def trials_html(trials: list[Any], best: float, scenario: str, command: str = "") -> str:
    """The --max-rate search as a page: every trial, and goodput against target rate."""
    xs = list(range(1, len(trials) + 1))
    lines = [("target/s", [t.rate for t in trials]), ("achieved/s", [t.achieved for t in trials]),
             ("goodput/s", [t.goodput for t in trials])]
    rows = "".join(
        f"<tr><td>{i}</td><td>{t.rate:.0f}</td><td>{t.achieved:.0f}</td><td>{t.goodput:.0f}</td>"
        f"<td>{100 * t.failure_ratio:.2f}</td><td>{t.p99_ms:.2f}</td><td>{t.cpu_us_per_unit:.0f}</td>"
        f"<td>{html.escape(', '.join(f'{n} {c}' for c, n in t.causes.items()))}</td></tr>"
        for i, t in enumerate(trials, 1))
    when = datetime.datetime.now().isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>natserver-loadtest: {html.escape(scenario)} --max-rate</title>
<style>{_STYLE}</style></head><body>
<h1>natserver-loadtest: {html.escape(scenario)} --max-rate</h1>
<p>{html.escape(when)}{(' &mdash; <code>' + html.escape(command) + '</code>') if command else ''}</p>
<p>Highest rate with fewer failures than the limit: <b>{best:.0f}/s</b></p>
{svg_chart("trials", xs, lines, "per second", x_unit="")}
<table><tr><th>trial</th><th>target/s</th><th>achieved/s</th><th>goodput/s</th><th>failed %</th>
<th>p99 ms</th><th>generator us/unit</th><th>causes</th></tr>{rows}</table>
</body></html>
"""


def to_html(stats: Stats, command: str = "") -> str:
    s = summary(stats)
    rows = stats.series
    xs = [r["t"] + 1 for r in rows]
    rate_lines = [("started/s", [r.get("started", 0) for r in rows]),
                  ("ok/s", [r.get("ok", 0) for r in rows]),
                  ("failed/s", [r.get("failed", 0) for r in rows]),
                  ("retrans/s", [r.get("retransmissions", 0) for r in rows])]
    if any(r.get("reg_started") for r in rows):
        rate_lines.append(("registers/s", [r.get("reg_started", 0) for r in rows]))
    pct_lines = [(f"p{p}", [sparse_percentile(r.get("lat") or {}, p) / 1e3 for r in rows])
                 for p in (50, 90, 99)]
    hist_rows = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(
            f"<td>{d.get(f, 0):.2f}</td>" if f != "n" else f"<td>{d['n']}</td>"
            for f in ("n", "p50", "p90", "p99", "max")) + "</tr>"
        for k, h in sorted(stats.hists.items()) if h.n for d in [h.summary()])
    cause_rows = "".join(f"<tr><td>{n}</td><td>{html.escape(c)}</td></tr>"
                         for c, n in sorted(stats.causes.items(), key=lambda kv: -kv[1]))
    counter_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
                           for k, v in sorted(stats.counters.items()))
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in s.items())
    when = datetime.datetime.now().isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>natserver-loadtest: {html.escape(stats.scenario)}</title>
<style>{_STYLE}</style></head><body>
<h1>natserver-loadtest: {html.escape(stats.scenario)}</h1>
<p>{html.escape(when)}{(' &mdash; <code>' + html.escape(command) + '</code>') if command else ''}</p>
<table>{head}</table>
<h2>Rate</h2>
{svg_chart("rate", xs, rate_lines, "per second")}
<h2>Response time ({html.escape(stats.primary)})</h2>
{svg_chart("percentiles", xs, pct_lines, "ms")}
<h2>Response times (ms)</h2>
<table><tr><th>exchange</th><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>{hist_rows}</table>
<h2>Failures by cause</h2>
<table><tr><th>count</th><th>cause</th></tr>{cause_rows or '<tr><td>0</td><td>none</td></tr>'}</table>
<h2>Counters</h2>
<table>{counter_rows}</table>
</body></html>
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:,.1f}"
    return str(v)
