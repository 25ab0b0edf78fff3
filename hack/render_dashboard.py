#!/usr/bin/env python3
"""Render the chart's Grafana dashboard (helm/tidings/dashboards/tidings.json) from
real data, for docs/observability.md: a real Prometheus scrapes a real `tidings dev`
carrying traffic for a few minutes (tests/dashboard_stack.py, the stack
test_chart_dashboard.py checks); then every panel's query_range is laid out as
Grafana lays the dashboard out (each panel's gridPos on Grafana's 24-column grid),
time series as inline SVG line charts, state timelines as bands, stat panels as
big numbers, and the page is screenshotted with Debian's headless chromium.

Not Grafana itself: its frontend cannot be built here (a large npm build, and only
package registries are reachable). The queries and the layout are the dashboard's;
the drawing is this script's.

    .venv/bin/python hack/render_dashboard.py [--minutes 4] [--out docs/observability/dashboard.png]

Needs the Prometheus server (hack/build-promtool.sh prometheus, or $PROMETHEUS),
redis-server and chromium (or $CHROMIUM); with $TIDINGS_PG_DSN (hack/postgres.sh
env) the Sources row shows two postgres adapters, one capturing and one failing.
"""

from __future__ import annotations

import argparse
import html
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from dashboard_stack import (  # noqa: E402 (after the path it is found on)
    Stack,
    load_dashboard,
    panel_queries,
    prometheus_binary,
)

WIDTH = 1440  # px, the page and the screenshot
CELL_HEIGHT, MARGIN = 30, 8  # Grafana's grid: a row unit is 30 px, 8 px between panels
# Grafana's classic palette, in its order.
PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0"]
SCRAPE_SECONDS = 5
RATE_INTERVAL = f"{4 * SCRAPE_SECONDS}s"  # Grafana's $__rate_interval: 4 scrape intervals


def legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text.strip() or "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def fmt(value: float, unit: str) -> str:
    """A value as Grafana's units show it, roughly: s, ops (/s), bytes, short."""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if unit == "s":
        if value and abs(value) < 1:
            return f"{value * 1000:.0f} ms"
        if abs(value) >= 3600:
            return f"{value / 3600:.1f} h"
        if abs(value) >= 60:
            return f"{value / 60:.1f} min"
        return f"{value:.3g} s"
    suffix = {"ops": " ops/s", "bytes": " B"}.get(unit, "")
    for scale, letter in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{letter}{suffix}"
    return f"{value:.3g}{suffix}"


def nice_step(span: float, count: int = 4) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about `count` grid lines."""
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def time_labels(start: float, end: float, x: Any, h: int) -> list[str]:
    labels = []
    for i in range(5):
        t = start + (end - start) * i / 4
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        text = datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")
        labels.append(
            f'<text x="{x(t):.1f}" y="{h - 4}" class="axis" text-anchor="{anchor}">{text}</text>'
        )
    return labels


Series = list[tuple[str, list[tuple[float, float]]]]  # (legend, [(t, v)]) per series


def fetch(stack: Stack, dashboard: dict[str, Any], start: float, end: float) -> dict[str, Series]:
    """Each panel's series over [start, end], by panel title."""
    assert stack.prometheus is not None
    found: dict[str, Series] = {}
    for query in panel_queries(dashboard, rate_interval=RATE_INTERVAL):
        result = stack.prometheus.query_range(query.expr, start, end, SCRAPE_SECONDS)
        series = found.setdefault(query.panel, [])
        for item in result:
            points = [(float(t), float(v)) for t, v in item["values"]]
            series.append((legend(query.legend, item["metric"]), points))
    # Series that are ever non-zero first, so that the lines drawn get the first
    # colours and the legend (cut to four lines) names them; the all-zero ones
    # (every filter error reason of every Trigger, …) after.
    for series in found.values():
        series.sort(key=lambda s: not any(v for _, v in s[1] if math.isfinite(v)))
    return found


def time_series_svg(series: Series, unit: str, start: float, end: float, w: int, h: int) -> str:
    left, right, top, bottom = 64, 8, 6, 20
    finite = [v for _, pts in series for _, v in pts if math.isfinite(v)]
    low = min([0.0, *finite])
    high = max(finite, default=1.0)
    step = nice_step((high - low) or 1.0)
    high = low + step * max(1, math.ceil((high - low) / step))

    def x(t: float) -> float:
        return left + (t - start) / (end - start) * (w - left - right)

    def y(v: float) -> float:
        return top + (1 - (v - low) / (high - low)) * (h - top - bottom)

    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    for i in range(round((high - low) / step) + 1):  # grid lines and their values
        v = low + step * i
        parts.append(
            f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">'
            f"{html.escape(fmt(v, unit))}</text>"
        )
    parts.extend(time_labels(start, end, x, h))
    for index, (_, points) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        # A gap where a value is missing or NaN, as Grafana draws it.
        runs: list[list[str]] = [[]]
        for t, v in points:
            if math.isfinite(v):
                runs[-1].append(f"{x(t):.1f},{y(v):.1f}")
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline points="{" ".join(run)}" stroke="{color}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)


def state_timeline_svg(
    series: Series, start: float, end: float, w: int, h: int, *, one_is_good: bool
) -> str:
    """A band per series: 1 and 0 in green and red (which is which: `one_is_good`)."""
    left, bottom = 150, 20
    span = (end - start) / (w - left - 8)
    good, bad = "#56a64b", "#e0403a"
    band = max(12, min(32, (h - bottom) // max(1, len(series)) - 4))
    parts = [f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">']
    for index, (name, points) in enumerate(series):
        top = 4 + index * (band + 4)
        parts.append(
            f'<text x="{left - 8}" y="{top + band / 2 + 4}" class="axis" text-anchor="end">'
            f"{html.escape(name)}</text>"
        )
        for (t, v), (t_next, _) in zip(points, [*points[1:], (end, math.nan)], strict=True):
            x0 = left + (t - start) / (end - start) * (w - left - 8)
            x1 = left + (t_next - start) / (end - start) * (w - left - 8)
            color = (good if one_is_good else bad) if v == 1 else (bad if one_is_good else good)
            parts.append(
                f'<rect x="{x0:.1f}" y="{top}" width="{max(0.5, x1 - x0):.1f}" height="{band}" '
                f'fill="{color}"/>'
            )
    parts.extend(time_labels(start, end, lambda t: left + (t - start) / span, h))
    parts.append("</svg>")
    return "".join(parts)


def stat_html(series: Series, unit: str) -> str:
    last = [pts[-1][1] for _, pts in series if pts]
    value = fmt(last[0], unit) if last else "No data"
    return f'<div class="stat">{html.escape(value)}</div>'


def legend_html(series: Series) -> str:
    items = [
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(name)}</span>'
        for i, (name, _) in enumerate(series)
    ]
    return f'<div class="legend">{"".join(items)}</div>'


def page(dashboard: dict[str, Any], data: dict[str, Series], start: float, end: float) -> str:
    column = WIDTH / 24
    blocks: list[str] = []
    bottom_edge = 0
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        left, top = grid["x"] * column, grid["y"] * (CELL_HEIGHT + MARGIN)
        width = grid["w"] * column - MARGIN
        height = grid["h"] * (CELL_HEIGHT + MARGIN) - MARGIN
        bottom_edge = max(bottom_edge, int(top + height))
        style = f"left:{left:.0f}px;top:{top:.0f}px;width:{width:.0f}px;height:{height:.0f}px"
        title = html.escape(panel["title"])
        if panel["type"] == "row":
            blocks.append(f'<div class="row" style="{style}">{title}</div>')
            continue
        series = data.get(panel["title"], [])
        unit = (panel.get("fieldConfig") or {}).get("defaults", {}).get("unit", "short")
        inner_w, inner_h = int(width) - 16, int(height) - 34
        if not series:
            body = '<div class="nodata">No data</div>'
        elif panel["type"] == "stat":
            body = stat_html(series, unit)
        elif panel["type"] == "state-timeline":
            # "Adapters capturing" reads state="Running" (1 is good); "Triggers in
            # Backoff" state="Backoff" (1 is bad).
            exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
            one_is_good = 'state="Running"' in exprs
            body = state_timeline_svg(series, start, end, inner_w, inner_h, one_is_good=one_is_good)
        else:
            rows = (len(series) + 2) // 3
            chart_h = inner_h - 17 * min(rows, 4)
            body = time_series_svg(series, unit, start, end, inner_w, chart_h) + legend_html(series)
        blocks.append(
            f'<div class="panel" style="{style}"><div class="title">{title}</div>{body}</div>'
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; background: #111217; font: 12px Inter, "DejaVu Sans", sans-serif;
       color: #ccccdc; }}
.board {{ position: relative; margin: 12px; height: {bottom_edge + 4}px; }}
.panel {{ position: absolute; background: #181b1f; border: 1px solid #2b2e33;
          border-radius: 2px; padding: 0 8px; box-sizing: border-box; overflow: hidden; }}
.title {{ font-weight: 500; font-size: 13px; line-height: 32px; color: #d8d9da; }}
.row {{ position: absolute; font-size: 15px; font-weight: 500; line-height: 30px;
        color: #d8d9da; }}
.grid {{ stroke: #2c3235; }}
.axis {{ fill: #8e8e8e; font-size: 10px; }}
.line {{ fill: none; stroke-width: 1.5; }}
.legend {{ font-size: 11px; line-height: 17px; max-height: 68px; overflow: hidden; }}
.legend span {{ display: inline-block; margin-right: 14px; white-space: nowrap; }}
.legend i {{ display: inline-block; width: 14px; height: 4px; margin: 0 5px 2px 0;
             vertical-align: middle; }}
.stat {{ font-size: 48px; font-weight: 500; color: #73bf69; text-align: center;
         margin-top: 20px; }}
.nodata {{ color: #8e8e8e; text-align: center; margin-top: 60px; }}
</style></head><body><div class="board">{"".join(blocks)}</div></body></html>"""


def screenshot(document: Path, out: Path, height: int) -> None:
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH + 24},{height}",
                f"--screenshot={out}",
                document.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="traffic before the picture")
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "observability" / "dashboard.png"
    )
    parser.add_argument("--html", type=Path, help="also keep the HTML page here")
    args = parser.parse_args()
    dashboard = load_dashboard()
    pg_dsn = os.environ.get("TIDINGS_PG_DSN")
    if not pg_dsn:
        print("render: no $TIDINGS_PG_DSN: the Sources row shows the schedule source only")
    with tempfile.TemporaryDirectory(prefix="tidings-dashboard-") as tmp:
        stack = Stack(Path(tmp), pg_dsn=pg_dsn, scrape_interval=f"{SCRAPE_SECONDS}s")
        try:
            stack.start(prometheus_binary())
            print(f"render: traffic for {args.minutes} min; tidings dev on {stack.url}")
            # The picture starts once a rate window of traffic has been scraped.
            time.sleep(2 * 4 * SCRAPE_SECONDS)
            start = time.time()
            time.sleep(args.minutes * 60)
            end = time.time()
            data = fetch(stack, dashboard, start, end)
        finally:
            stack.stop()
    document = page(dashboard, data, start, end)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.html) if args.html else Path(tmp) / "dashboard.html"
        path.write_text(document)
        screenshot(path, args.out, rows * (CELL_HEIGHT + MARGIN) + 24)
    print(f"render: {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
