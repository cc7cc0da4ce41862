#!/usr/bin/env python3
"""Draws the main SLO series of a real run as an SVG (no dependencies).

The real-Prometheus test writes what Prometheus answered to range queries
of the run when MAPGUARD_SLO_SERIES_OUT names a file:

    MAPGUARD_SLO_SERIES_OUT=/tmp/slo.json \\
        cargo test -p mapguard-agent --test slo -- a_real_prometheus
    python3 scripts/slo-chart.py /tmp/slo.json docs/slo-run.svg

Input: [{"title": ..., "series": [Prometheus matrix series, ...]}, ...],
each series {"metric": {"workload": ...}, "values": [[unix time, "value"], ...]}.
"""

import json
import math
import sys

WIDTH, PANEL_H, LEFT, RIGHT, TOP, GAP = 760, 120, 70, 150, 30, 40
COLOURS = {"checkout": "#c0392b", "catalog": "#2471a3"}
OTHER = ["#7d3c98", "#1e8449", "#b9770e"]


def nice_max(v):
    """A round axis maximum at or above v."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def label(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:g}"
    return f"{v:.2g}"


def main(src, dst):
    with open(src) as f:
        panels = [(p["title"], p["series"]) for p in json.load(f)]
    points = [
        (float(t), float(v))
        for _, series in panels
        for s in series
        for t, v in s["values"]
        if v not in ("NaN", "+Inf", "-Inf")
    ]
    t0 = min(t for t, _ in points)
    t1 = max(t for t, _ in points)
    span = max(t1 - t0, 1.0)
    plot_w = WIDTH - LEFT - RIGHT
    height = TOP + len(panels) * (PANEL_H + GAP)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">'
        "mapguard node agent scraped by Prometheus: a racing and a clean workload "
        f"({span:.0f} s)</text>",
    ]
    colours = dict(COLOURS)
    for i, (title, series) in enumerate(panels):
        y0 = TOP + i * (PANEL_H + GAP) + 14
        vals = [
            float(v)
            for s in series
            for _, v in s["values"]
            if v not in ("NaN", "+Inf", "-Inf")
        ]
        top = nice_max(max(vals, default=0.0))
        out.append(f'<text x="{LEFT}" y="{y0 - 4}" font-weight="bold">{title}</text>')
        out.append(
            f'<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" '
            'fill="none" stroke="#999"/>'
        )
        for frac in (0, 0.5, 1):
            y = y0 + PANEL_H * (1 - frac)
            out.append(
                f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{label(top * frac)}</text>'
            )
            if 0 < frac < 1:
                out.append(
                    f'<line x1="{LEFT}" y1="{y}" x2="{LEFT + plot_w}" y2="{y}" '
                    'stroke="#ddd"/>'
                )
        legend_y = y0 + 12
        for s in sorted(series, key=lambda s: s["metric"].get("workload", "")):
            name = s["metric"].get("workload", "?")
            colour = colours.setdefault(name, OTHER[len(colours) % len(OTHER)])
            path = []
            for t, v in s["values"]:
                if v in ("NaN", "+Inf", "-Inf"):
                    continue
                x = LEFT + plot_w * (float(t) - t0) / span
                y = y0 + PANEL_H * (1 - float(v) / top)
                path.append(f"{x:.1f},{y:.1f}")
            if path:
                out.append(
                    f'<polyline points="{" ".join(path)}" fill="none" '
                    f'stroke="{colour}" stroke-width="1.5"/>'
                )
            out.append(
                f'<rect x="{LEFT + plot_w + 12}" y="{legend_y - 8}" width="10" '
                f'height="10" fill="{colour}"/>'
            )
            out.append(f'<text x="{LEFT + plot_w + 26}" y="{legend_y + 1}">{name}</text>')
            legend_y += 16
        if i == len(panels) - 1:
            for frac in (0, 0.25, 0.5, 0.75, 1):
                x = LEFT + plot_w * frac
                out.append(
                    f'<text x="{x}" y="{y0 + PANEL_H + 14}" text-anchor="middle">'
                    f"{span * frac:.0f} s</text>"
                )
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: slo-chart.py SERIES.json OUT.svg")
    main(sys.argv[1], sys.argv[2])
