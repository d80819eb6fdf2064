"""Inline SVG charts, built on the server (no JavaScript; the CSP allows no script at all). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

#: One colour per blog (cycled), readable on white and distinct in print.
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 260, 56, 130, 16, 34


@dataclass(frozen=True)
class Mark:
    at: datetime
    blog_id: int
    value: float
    kind: str  # sale | admin | reconcile | set | other
    label: str


def colour(blog_id: int) -> str:
    return PALETTE[(blog_id - 1) % len(PALETTE)]


def stock_chart(
    series: Mapping[int, Sequence[tuple[datetime, float]]], marks: Sequence[Mark], title: str
) -> str:
    """A step chart of each blog's stock over time, with marks for sales, admin edits and reconciles."""
    points = [p for s in series.values() for p in s]
    if not points:
        return _empty(title, "no stock history yet")
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    v0, v1 = min(0.0, *(p[1] for p in points)), max(1.0, *(p[1] for p in points))
    span_t = max((t1 - t0).total_seconds(), 1.0)
    span_v = v1 - v0 or 1.0

    def x(t: datetime) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * (t - t0).total_seconds() / span_t

    def y(v: float) -> float:
        return PAD_T + (H - PAD_T - PAD_B) * (1 - (v - v0) / span_v)

    out = [_open(title)]
    out += _axes(v0, v1, t0, t1, y)
    for n, (blog_id, s) in enumerate(sorted(series.items())):
        path = []
        for i, (t, v) in enumerate(s):
            if i:
                path.append(f"{x(t):.1f},{y(s[i - 1][1]):.1f}")
            path.append(f"{x(t):.1f},{y(v):.1f}")
        c = colour(blog_id)
        out.append(
            f'<polyline class="series" fill="none" stroke="{c}" stroke-width="2" points="{" ".join(path)}">'
            f"<title>blog {blog_id}</title></polyline>"
        )
        out.append(f'<rect x="{W - PAD_R + 12}" y="{PAD_T + n * 18}" width="12" height="12" fill="{c}"/>')
        out.append(
            f'<text x="{W - PAD_R + 30}" y="{PAD_T + n * 18 + 10}" class="legend">blog {blog_id}</text>'
        )
    shapes = {"sale": "circle", "reconcile": "rect", "set": "rect", "admin": "diamond"}
    for m in marks:
        cx, cy, c = x(m.at), y(m.value), colour(m.blog_id)
        tip = f"<title>{escape(m.label)}</title>"
        shape = shapes.get(m.kind, "circle")
        if shape == "rect":
            out.append(
                f'<rect class="mark {m.kind}" x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="white" stroke="{c}" stroke-width="2">{tip}</rect>'
            )
        elif shape == "diamond":
            out.append(
                f'<polygon class="mark admin" points="{cx:.1f},{cy - 5:.1f} {cx + 5:.1f},{cy:.1f} {cx:.1f},{cy + 5:.1f} {cx - 5:.1f},{cy:.1f}" fill="{c}">{tip}</polygon>'
            )
        else:
            out.append(
                f'<circle class="mark {m.kind}" cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{c}">{tip}</circle>'
            )
    out.append("</svg>")
    return "".join(out)


def hourly_chart(counts: Mapping[int, Mapping[datetime, int]], hours: Sequence[datetime], title: str) -> str:
    """Changes per hour per blog: one line per blog over ``hours``."""
    if not hours or not any(counts.values()):
        return _empty(title, "no changes in this period")
    top = max(1, *(n for c in counts.values() for n in c.values()))
    step = (W - PAD_L - PAD_R) / max(len(hours) - 1, 1)

    def y(v: float) -> float:
        return PAD_T + (H - PAD_T - PAD_B) * (1 - v / top)

    out = [_open(title)]
    out += _axes(0, top, hours[0], hours[-1], y)
    for n, (blog_id, c) in enumerate(sorted(counts.items())):
        pts = " ".join(f"{PAD_L + i * step:.1f},{y(c.get(h, 0)):.1f}" for i, h in enumerate(hours))
        col = colour(blog_id)
        out.append(
            f'<polyline class="series" fill="none" stroke="{col}" stroke-width="1.5" points="{pts}"><title>blog {blog_id}</title></polyline>'
        )
        out.append(f'<rect x="{W - PAD_R + 12}" y="{PAD_T + n * 18}" width="12" height="12" fill="{col}"/>')
        out.append(
            f'<text x="{W - PAD_R + 30}" y="{PAD_T + n * 18 + 10}" class="legend">blog {blog_id}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _open(title: str) -> str:
    return (
        f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>'
    )


def _axes(v0: float, v1: float, t0: datetime, t1: datetime, y: object) -> list[str]:
    yf = y  # type: ignore[assignment]
    out = [f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#999"/>']
    for i in range(5):
        v = v0 + (v1 - v0) * i / 4
        yy = yf(v)  # type: ignore[operator]
        out.append(f'<line x1="{PAD_L}" y1="{yy:.1f}" x2="{W - PAD_R}" y2="{yy:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{yy + 4:.1f}" text-anchor="end" class="tick">{v:g}</text>')
    fmt = "%m-%d %H:%M"
    out.append(f'<text x="{PAD_L}" y="{H - 10}" class="tick">{t0.strftime(fmt)} UTC</text>')
    out.append(
        f'<text x="{W - PAD_R}" y="{H - 10}" text-anchor="end" class="tick">{t1.strftime(fmt)} UTC</text>'
    )
    return out


def _empty(title: str, text: str) -> str:
    return f'{_open(title)}<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="empty">{escape(text)}</text></svg>'
