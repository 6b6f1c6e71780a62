"""A run's reports: JUnit XML (a testcase per scenario x board), the JSON run record, and one HTML
file with a timeline per board (steps, stimuli and faults, readings, windows) and, when a scenario
ran on real and virtual boards, their results side by side."""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from hil.rig.record import FAILED, SKIPPED, CaseRecord, Measurement, RunRecord

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    """Text XML 1.0 can carry: a console holds raw-REPL control bytes (Ctrl-A, Ctrl-D)."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


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
    )
    for case in record.cases:
        tc = ET.SubElement(
            suite,
            "testcase",
            classname=f"hil.{record.rig}.{case.board}",
            name=case.scenario,
            time=f"{case.seconds:.1f}",
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
        lines.append(f"{s.where} {s.outcome} {s.seconds:.1f}s {s.detail}".rstrip())
        for m in s.measurements:
            lines.append(
                f"    {m.name}={m.value:g}{m.unit and ' ' + m.unit} limit={m.limit} low={m.low} {m.outcome}"
            )
    return "\n".join(lines)


_COLOURS = {
    "reading": "#2b8a3e",
    "window": "#1c7ed6",
    "fault": "#e03131",
    "stimulus": "#f08c00",
    "step": "#868e96",
}
_ROWS = ("step", "stimulus", "fault", "window", "reading")


def html_report(record: RunRecord) -> str:
    t0, t1 = record.started, max(record.ended, record.started + 1)
    width = 1000.0

    def x(t: float) -> float:
        return max(0.0, min(width, (t - t0) / (t1 - t0) * width))

    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>HIL run {html.escape(record.rig)} {record.run_id}</title>",
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}.passed{background:#d3f9d8}.failed{background:#ffe3e3}"
        ".skipped{background:#f1f3f5}pre{background:#f8f9fa;max-height:20em;overflow:auto}</style>",
        f"<h1>HIL run of rig {html.escape(record.rig)} ({record.run_id})</h1>",
        f"<p>{len(record.boards)} boards, {len({c.scenario for c in record.cases})} scenarios, "
        f"{record.ended - record.started:.0f} s; "
        + ", ".join(f"{k}: {v}" for k, v in record.summary().items())
        + "</p>",
    ]
    scenarios = list(dict.fromkeys(c.scenario for c in record.cases))
    boards = [b["id"] for b in record.boards]
    parts.append(
        "<h2>Results (scenario × board; real and virtual side by side)</h2><table><tr><th>scenario</th>"
    )
    kinds = {b["id"]: b["kind"] for b in record.boards}
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
        events = [e for e in record.events if e.board == b["id"]]
        height = 22 * len(_ROWS) + 20
        parts.append(
            f"<h2>Board {html.escape(b['id'])}</h2><p>{html.escape(b['kind'])} "
            f"device {html.escape(b['device'])} port {html.escape(b['port'])} "
            f"firmware {html.escape(b['firmware'] or '?')} state {b['state']}</p>"
        )
        parts.append(f"<svg width='{width + 80:.0f}' height='{height}' style='border:1px solid #ddd'>")
        for row, kind in enumerate(_ROWS):
            y = 10 + row * 22
            parts.append(f"<text x='0' y='{y + 12}' font-size='11'>{kind}</text>")
            for e in (e for e in events if e.kind == kind):
                left = 70 + x(e.start)
                w = max(2.0, x(e.end) - x(e.start)) if kind != "reading" else 2.0
                parts.append(
                    f"<rect x='{left:.1f}' y='{y}' width='{w:.1f}' height='16' fill='{_COLOURS[kind]}' "
                    f"opacity='0.7'><title>{html.escape(e.label)}</title></rect>"
                )
        parts.append("</svg>")
        for case in (c for c in record.cases if c.board == b["id"]):
            parts.append(
                f"<h3 class='{case.outcome}'>{html.escape(case.scenario)}: "
                f"{case.outcome} ({case.seconds:.0f}s)</h3>"
                f"<p>{html.escape(case.detail)}</p><table><tr><th>step</th><th>outcome</th><th>s</th>"
                "<th>measurements</th><th>detail</th></tr>"
            )
            for s in case.steps:
                ms = "<br>".join(_measurement_html(m) for m in s.measurements)
                parts.append(
                    f"<tr class='{s.outcome}'><td>{html.escape(s.where)}</td><td>{s.outcome}</td>"
                    f"<td>{s.seconds:.1f}</td><td>{ms}</td><td>{html.escape(s.detail)}</td></tr>"
                )
            parts.append("</table>")
            if case.console:
                parts.append(
                    f"<details><summary>console</summary><pre>{html.escape(_clean(case.console))}</pre></details>"
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
        if junit_path is None:
            (report_dir / "junit.xml").write_text(junit(record))
            written.append(report_dir / "junit.xml")
    return written
