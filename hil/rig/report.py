"""A run's reports: JUnit XML (a testcase per scenario x board, with timestamps and the host), the
JSON run record, each board's console as a file, and one HTML file: what ran where (date, host, rig
file, firmware, commit), the results (real and virtual boards side by side), and per board a timeline
with a time axis and a legend, its readings plotted against the environment the rig imposed and the
windows the backend stored, each case's steps with their arguments and measurements, and its console.
"""

from __future__ import annotations

import html
import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from hil.rig.record import FAILED, SKIPPED, BoardSeries, CaseRecord, Measurement, RunRecord

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_UNITS = {"temperature": "°C", "humidity": "%RH", "pressure": "hPa", "luminosity": "lx"}


def _clean(text: str) -> str:
    """Text XML 1.0 can carry: a console holds raw-REPL control bytes (Ctrl-A, Ctrl-D)."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _iso(epoch: float) -> str:
    """JUnit's timestamp: ISO 8601 without a zone (UTC here)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def junit(record: RunRecord) -> str:
    summary = record.summary()
    suite = ET.Element(
        "testsuite",
        name=f"hil.{record.rig}",
        tests=str(len(record.cases)),
        failures=str(summary[FAILED]),
        skipped=str(summary[SKIPPED]),
        errors="0",
        time=f"{record.ended - record.started:.1f}",
        timestamp=_iso(record.started),
        hostname=record.meta.get("host", ""),
    )
    props = ET.SubElement(suite, "properties")
    for name, value in record.meta.items():
        ET.SubElement(props, "property", name=name, value=value)
    for case in record.cases:
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=f"hil.{record.rig}.{case.board}",
            name=case.scenario,
            time=f"{case.seconds:.1f}",
            timestamp=_iso(case.started),
        )
        props = ET.SubElement(tc, "properties")
        for name, value in (
            ("firmware_version", case.firmware),
            ("board_id", case.board),
            ("device", case.device),
            ("kind", case.kind),
            ("port", case.port),
        ):
            ET.SubElement(props, "property", name=name, value=value)
        if case.outcome == FAILED:
            failure = ET.SubElement(tc, "failure", message=_clean(case.detail[:500]))
            failure.text = _clean(_steps_text(case))
        elif case.outcome == SKIPPED:
            ET.SubElement(tc, "skipped", message=_clean(case.detail[:500]))
        out = ET.SubElement(tc, "system-out")
        out.text = _clean(_steps_text(case) + "\n--- console ---\n" + case.console[-5000:])
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def _steps_text(case: CaseRecord) -> str:
    lines = []
    for s in case.steps:
        stamp = time.strftime("%H:%M:%S", time.gmtime(s.started))
        lines.append(f"{stamp} {s.label} {s.outcome} {s.seconds:.1f}s {s.detail}".rstrip())
        for m in s.measurements:
            lines.append(
                f"    {m.name}={m.value:g}{m.unit and ' ' + m.unit} limit={m.limit} low={m.low} {m.outcome}"
            )
    return "\n".join(lines)


# --- HTML -----------------------------------------------------------------------------------------

_COLOURS = {
    "step": "#868e96",
    "stimulus": "#f08c00",
    "fault": "#e03131",
    "window": "#1c7ed6",
    "reading": "#2b8a3e",
}
_ROW_NAMES = {
    "step": "steps",
    "stimulus": "stimuli",
    "fault": "faults",
    "window": "windows",
    "reading": "readings",
}
_ROWS = tuple(_COLOURS)
_LEFT, _WIDTH = 80.0, 960.0  # the plot area of every chart: one x scale for a board's charts
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#212529;max-width:1150px}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #dee2e6}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ced4da;padding:3px 8px;text-align:left}
th{background:#f1f3f5} .meta th{width:11em}
.passed{background:#d3f9d8} .failed{background:#ffe3e3} .skipped{background:#f1f3f5}
pre{background:#f8f9fa;max-height:24em;overflow:auto;padding:.5em;font-size:12px}
small{color:#868e96} svg{display:block;margin:.3em 0} svg text{font:11px system-ui,sans-serif}
.charts{display:grid;grid-template-columns:1fr;gap:.2em}
"""


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if span / step <= 10:
            return float(step)
    return 14400.0


def _since(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}" if seconds >= 60 else f"{seconds:.0f}s"


class _Scale:
    """Epoch seconds -> x on the run's span."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + 1)

    def x(self, t: float) -> float:
        return _LEFT + max(0.0, min(_WIDTH, (t - self.t0) / (self.t1 - self.t0) * _WIDTH))

    def axis(self, y: float, caption: bool = True) -> list[str]:
        """Ticks at round offsets from the start, labelled with the offset and the clock time (UTC)."""
        out = [f"<line x1='{_LEFT}' x2='{_LEFT + _WIDTH}' y1='{y}' y2='{y}' stroke='#868e96'/>"]
        step = _tick_step(self.t1 - self.t0)
        offset = 0.0
        while self.t0 + offset <= self.t1:
            x = self.x(self.t0 + offset)
            clock = time.strftime("%H:%M:%S", time.gmtime(self.t0 + offset))
            out.append(
                f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{y}' y2='{y + 4}' stroke='#868e96'/>"
                f"<text x='{x:.1f}' y='{y + 15}' text-anchor='middle'>{_since(offset)}</text>"
                f"<text x='{x:.1f}' y='{y + 27}' text-anchor='middle' fill='#868e96'>{clock}</text>"
            )
            offset += step
        if caption:
            out.append(
                f"<text x='{_LEFT + _WIDTH}' y='{y + 39}' text-anchor='end' fill='#868e96'>"
                "time since the run started (m:ss); clock time UTC</text>"
            )
        return out


def _legend(items: list[tuple[str, str]], y: float) -> list[str]:
    """A row of (swatch, name) pairs; a swatch is SVG drawn at (x, y)."""
    out, x = [], _LEFT
    for swatch, name in items:
        out.append(swatch.format(x=x, y=y, x2=x + 14, ym=y + 5))
        out.append(f"<text x='{x + 18}' y='{y + 9}'>{html.escape(name)}</text>")
        x += 30 + 7 * len(name)
    return out


def _timeline(record: RunRecord, board: str, scale: _Scale) -> str:
    events = [e for e in record.events if e.board == board]
    row_h, top = 22, 24
    height = top + row_h * len(_ROWS) + 46
    parts = [f"<svg width='{_LEFT + _WIDTH + 20:.0f}' height='{height}' role='img'>"]
    parts += _legend(
        [
            (f"<rect x='{{x}}' y='{{y}}' width='12' height='10' fill='{_COLOURS[k]}' opacity='.75'/>", k)
            for k in _ROWS
        ],
        2,
    )
    for row, kind in enumerate(_ROWS):
        y = top + row * row_h
        parts.append(f"<text x='0' y='{y + 12}'>{_ROW_NAMES[kind]}</text>")
        parts.append(
            f"<rect x='{_LEFT}' y='{y}' width='{_WIDTH}' height='16' fill='#f8f9fa' stroke='#e9ecef'/>"
        )
        for e in (e for e in events if e.kind == kind):
            left = scale.x(e.start)
            w = max(2.0, scale.x(e.end) - left) if kind != "reading" else 2.0
            parts.append(
                f"<rect x='{left:.1f}' y='{y}' width='{w:.1f}' height='16' fill='{_COLOURS[kind]}' "
                f"opacity='0.75' stroke='#fff' stroke-width='{0.6 if kind == 'window' else 0}'>"
                f"<title>{html.escape(e.label)}</title></rect>"
            )
    parts += scale.axis(top + row_h * len(_ROWS) + 2)
    parts.append("</svg>")
    return "".join(parts)


def _chart(metric: str, series: BoardSeries, faults: list[tuple[float, float]], scale: _Scale) -> str:
    """One metric over the run: the imposed environment as a line, readings as dots, stored final
    windows' means as bars over their span, faults shaded."""
    readings = series.readings.get(metric, [])
    expected = series.expected.get(metric, [])
    windows = series.windows.get(metric, [])
    values = [v for _, v in readings] + [v for _, v in expected] + [m for _, _, m in windows]
    if not values:
        return ""
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, abs(high) * 0.002, 0.05)
    low, high = low - pad, high + pad
    top, h = 22, 110

    def y(v: float) -> float:
        return top + h - (v - low) / (high - low) * h

    unit = _UNITS.get(metric, "")
    parts = [f"<svg width='{_LEFT + _WIDTH + 20:.0f}' height='{top + h + 34}' role='img'>"]
    legend = [
        ("<line x1='{x}' x2='{x2}' y1='{ym}' y2='{ym}' stroke='#f08c00' stroke-width='2'/>", "imposed"),
        ("<circle cx='{x}' cy='{ym}' r='2.5' fill='#2b8a3e' transform='translate(6,0)'/>", "readings"),
        (
            "<line x1='{x}' x2='{x2}' y1='{ym}' y2='{ym}' stroke='#1c7ed6' stroke-width='4'/>",
            "final window means",
        ),
        ("<rect x='{x}' y='{y}' width='12' height='10' fill='#e03131' opacity='.15'/>", "faults"),
    ]
    parts += _legend(legend if expected else legend[1:], 2)
    parts.append(f"<text x='0' y='{top + 12}' font-weight='bold'>{html.escape(metric)}</text>")
    parts.append(f"<text x='0' y='{top + 26}' fill='#868e96'>{html.escape(unit)}</text>")
    for start, end in faults:
        parts.append(
            f"<rect x='{scale.x(start):.1f}' y='{top}' width='{max(1.0, scale.x(end) - scale.x(start)):.1f}' "
            f"height='{h}' fill='#e03131' opacity='.12'/>"
        )
    for i in range(5):
        v = low + (high - low) * i / 4
        parts.append(
            f"<line x1='{_LEFT}' x2='{_LEFT + _WIDTH}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='#f1f3f5'/>"
            f"<text x='{_LEFT - 4}' y='{y(v) + 4:.1f}' text-anchor='end' fill='#495057'>"
            f"{v:.{_digits(high - low)}f}</text>"
        )
    if expected:
        points = " ".join(f"{scale.x(t):.1f},{y(v):.1f}" for t, v in sorted(expected))
        parts.append(f"<polyline points='{points}' fill='none' stroke='#f08c00' stroke-width='2'/>")
    for start, end, mean in windows:
        parts.append(
            f"<line x1='{scale.x(start):.1f}' x2='{scale.x(end):.1f}' y1='{y(mean):.1f}' y2='{y(mean):.1f}' "
            f"stroke='#1c7ed6' stroke-width='4' opacity='.8'>"
            f"<title>window mean {mean:g} {unit}</title></line>"
        )
    for t, v in readings:
        parts.append(f"<circle cx='{scale.x(t):.1f}' cy='{y(v):.1f}' r='2' fill='#2b8a3e'/>")
    parts += scale.axis(top + h + 2, caption=False)
    parts.append("</svg>")
    return "".join(parts)


def _digits(span: float) -> int:
    return 0 if span >= 20 else 1 if span >= 2 else 2


def _meta_table(record: RunRecord) -> str:
    rows = [
        ("date", record.meta.get("date", _iso(record.started))),
        ("host", record.meta.get("host", "")),
        ("rig file", record.meta.get("rig_file", "")),
        ("firmware", f"{record.meta.get('firmware_version', '')} from {record.meta.get('firmware_dir', '')}"),
        ("commit", record.meta.get("commit", "")),
        ("run", f"{record.run_id}, {record.ended - record.started:.0f} s"),
        ("results", ", ".join(f"{k} {v}" for k, v in record.summary().items())),
    ]
    cells = "".join(f"<tr><th>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='meta'>{cells}</table>"


def html_report(record: RunRecord) -> str:
    scale = _Scale(record.started, record.ended)
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>HIL run {html.escape(record.rig)} {record.run_id}</title>",
        f"<style>{_STYLE}</style>",
        f"<h1>HIL run of rig {html.escape(record.rig)}</h1>",
        _meta_table(record),
    ]
    scenarios = list(dict.fromkeys(c.scenario for c in record.cases))
    boards = [b["id"] for b in record.boards]
    kinds = {b["id"]: b["kind"] for b in record.boards}
    parts.append(
        "<h2>Results</h2><p><small>scenario × board; real and virtual boards side by side; "
        "hover a cell for its detail</small></p><table><tr><th>scenario</th>"
    )
    parts += [f"<th>{html.escape(b)}<br><small>{kinds.get(b, '')}</small></th>" for b in boards]
    parts.append("</tr>")
    for sc in scenarios:
        parts.append(f"<tr><td>{html.escape(sc)}</td>")
        for b in boards:
            case = next((c for c in record.cases if c.scenario == sc and c.board == b), None)
            if case is None:
                parts.append("<td></td>")
            else:
                parts.append(
                    f"<td class='{case.outcome}' title='{html.escape(case.detail)}'>"
                    f"{case.outcome} {case.seconds:.0f}s</td>"
                )
        parts.append("</tr>")
    parts.append("</table>")
    for b in record.boards:
        bid = b["id"]
        parts.append(
            f"<h2>Board {html.escape(bid)}</h2><p>{html.escape(b['kind'])} · device "
            f"{html.escape(b['device'])} · place {html.escape(b.get('place', ''))} · port "
            f"{html.escape(b['port'])} · firmware {html.escape(b['firmware'] or '?')} · state "
            f"{html.escape(b['state'])}{(': ' + html.escape(b['broken'])) if b.get('broken') else ''}</p>"
        )
        parts.append("<h3>Timeline</h3><p><small>hover a mark for its detail</small></p>")
        parts.append(_timeline(record, bid, scale))
        series = next((s for s in record.series if s.board == bid), None)
        faults = [(e.start, e.end) for e in record.events if e.board == bid and e.kind == "fault"]
        if series is not None and series.readings:
            imposed = "the environment the rig imposed (scripted), " if series.expected else ""
            parts.append(
                f"<h3>Readings</h3><p><small>{imposed}what the board published, and the means of the "
                "final tumbling windows the backend stored</small></p><div class='charts'>"
            )
            parts += [_chart(m, series, faults, scale) for m in _UNITS]
            parts.append("</div>")
        for case in (c for c in record.cases if c.board == bid):
            parts.append(
                f"<h3 class='{case.outcome}'>{html.escape(case.scenario)}: "
                f"{case.outcome} ({case.seconds:.0f}s)</h3>"
                + (f"<p>{html.escape(case.detail)}</p>" if case.detail else "")
                + "<table><tr><th>at</th><th>step</th><th>outcome</th><th>s</th>"
                "<th>measurements</th><th>detail</th></tr>"
            )
            for s in case.steps:
                ms = "<br>".join(_measurement_html(m) for m in s.measurements)
                at = _since(max(0.0, s.started - record.started))
                parts.append(
                    f"<tr class='{s.outcome}'><td>{at}</td><td>{html.escape(s.label)}<br>"
                    f"<small>{html.escape(s.where)}</small></td><td>{s.outcome}</td>"
                    f"<td>{s.seconds:.1f}</td><td>{ms}</td><td>{html.escape(s.detail)}</td></tr>"
                )
            parts.append("</table>")
            if case.console:
                parts.append(
                    "<details><summary>console during this scenario</summary>"
                    f"<pre>{html.escape(_clean(case.console))}</pre></details>"
                )
        console = record.consoles.get(bid, "")
        if console:
            parts.append(
                f"<details><summary>the board's whole console (console/{html.escape(bid)}.log)</summary>"
                f"<pre>{html.escape(_clean(console))}</pre></details>"
            )
    return "\n".join(parts)


def _measurement_html(m: Measurement) -> str:
    unit = html.escape(m.unit and " " + m.unit)
    limit = "" if m.limit is None else f" ≤ {m.limit:g}"
    low = "" if m.low is None else f" ≥ {m.low:g}"
    return f"<span class='{m.outcome}'>{html.escape(m.name)}={m.value:g}{unit}{limit}{low}</span>"


def write(record: RunRecord, report_dir: Path | None, junit_path: Path | None) -> list[Path]:
    written = []
    if junit_path is not None:
        junit_path.parent.mkdir(parents=True, exist_ok=True)
        junit_path.write_text(junit(record))
        written.append(junit_path)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "run.json").write_text(json.dumps(record.to_json(), indent=1, default=str))
        (report_dir / "report.html").write_text(html_report(record))
        written += [report_dir / "run.json", report_dir / "report.html"]
        if record.consoles:
            consoles = report_dir / "console"
            consoles.mkdir(exist_ok=True)
            for board, text in record.consoles.items():
                (consoles / f"{board}.log").write_text(text)
            written.append(consoles)
        if junit_path is None:
            (report_dir / "junit.xml").write_text(junit(record))
            written.append(report_dir / "junit.xml")
    return written
