"""A run's report (one self-contained HTML file: inline CSS and SVG, nothing fetched) and the workflow's DAG as
Graphviz DOT, Mermaid or SVG (laid out here: no Graphviz needed)."""

from __future__ import annotations

import html
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.errors import UsageError, UserError

Edge = tuple[str, str, str]  # upstream step, downstream step, the dataset between them

COLOURS = {"done": "#2e7d32", "up to date": "#66bb6a", "failed": "#c62828", "interrupted": "#ef6c00",
           "running": "#1565c0", "submitted": "#1565c0"}
GREY = "#9e9e9e"
RUN_ID = re.compile(r"\brun_id[=: ]+([0-9a-f]{32})\b")


# ---------------------------------------------------------------- the DAG as text


def _q(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(steps: list[str], edges: list[Edge]) -> str:
    lines = ["digraph workflow {", "  rankdir=LR;", '  node [shape=box, style=rounded, fontname="sans-serif"];']
    lines += [f"  {_q(s)};" for s in steps]
    lines += [f"  {_q(a)} -> {_q(b)} [label={_q(d)}];" for a, b, d in edges]
    return "\n".join(lines + ["}"]) + "\n"


def to_mermaid(steps: list[str], edges: list[Edge]) -> str:
    ids = {s: f"s{i}" for i, s in enumerate(steps)}

    def label(text: str) -> str:
        return text.replace('"', "#quot;")

    lines = ["flowchart LR"] + [f'  {ids[s]}["{label(s)}"]' for s in steps]
    lines += [f'  {ids[a]} -->|"{label(d)}"| {ids[b]}' for a, b, d in edges]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- SVG


def _layers(steps: list[str], edges: list[Edge]) -> dict[str, int]:
    """Each step's column: one more than its deepest upstream step (steps come in dependency order)."""
    depth: dict[str, int] = {}
    ups: dict[str, list[str]] = {s: [] for s in steps}
    for a, b, _ in edges:
        if a in ups and b in ups:
            ups[b].append(a)
    for s in steps:
        depth[s] = 1 + max((depth[u] for u in ups[s] if u in depth), default=-1)
    return depth


def to_svg(steps: list[str], edges: list[Edge], status: dict[str, str] | None = None) -> str:
    depth = _layers(steps, edges)
    width = {s: max(80, 8 * len(s) + 24) for s in steps}
    cols: dict[int, list[str]] = {}
    for s in steps:
        cols.setdefault(depth[s], []).append(s)
    col_w = [max(width[s] for s in cols[c]) for c in sorted(cols)]
    gap, row_h, box_h = 70, 56, 34
    pos: dict[str, tuple[float, float]] = {}
    x = 10.0
    for c, w in zip(sorted(cols), col_w, strict=True):
        for r, s in enumerate(cols[c]):
            pos[s] = (x, 10 + r * row_h)
        x += w + gap
    total_w = int(x - gap + 10) if steps else 20
    total_h = 20 + max((len(v) for v in cols.values()), default=0) * row_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{total_w}" height="{total_h}" '
           f'viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="13">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for a, b, d in edges:
        if a not in pos or b not in pos:
            continue
        x1, y1 = pos[a][0] + width[a], pos[a][1] + box_h / 2
        x2, y2 = pos[b][0], pos[b][1] + box_h / 2
        mid = (x1 + x2) / 2
        out.append(f'<path d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}" '
                   f'fill="none" stroke="#555" marker-end="url(#arrow)"><title>{html.escape(d)}</title></path>')
    for s in steps:
        x0, y0 = pos[s]
        colour = COLOURS.get((status or {}).get(s, ""), GREY) if status is not None else "#455a64"
        out.append(f'<g class="node"><rect x="{x0:.0f}" y="{y0:.0f}" width="{width[s]}" height="{box_h}" rx="8" '
                   f'fill="#fff" stroke="{colour}" stroke-width="2"/><text x="{x0 + width[s] / 2:.0f}" '
                   f'y="{y0 + 22:.0f}" text-anchor="middle">{html.escape(s)}</text></g>')
    return "\n".join(out + ["</svg>"]) + "\n"


def ticks(span: float) -> list[tuple[float, str]]:
    """At most six round times from 0 to span (1, 2 or 5 times a power of ten apart), each labelled once."""
    step = 10 ** math.floor(math.log10(span / 5)) if span > 0 else 1.0
    step = next(m * step for m in (1, 2, 5, 10) if span / (m * step) <= 5)
    digits = max(0, -math.floor(math.log10(step)))
    return [(k * step, f"{k * step:.{digits}f}s") for k in range(int(span / step + 1e-9) + 1)]


def timeline_svg(manifest: dict[str, Any]) -> str:
    """One row per step: a bar from its start to its end (each earlier attempt a lighter bar before it)."""
    steps = [(name, info) for name, info in manifest.get("steps", {}).items() if info.get("start")]
    if not steps:
        return "<p>No step ran.</p>"
    t0 = min(float(info["start"]) for _, info in steps)
    t1 = max(float(info.get("end") or manifest.get("ended") or info["start"]) for _, info in steps)
    span = max(t1 - t0, 1e-3)
    label_w, bar_w, row_h = 180, 760, 26
    height = 30 + row_h * len(steps)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{label_w + bar_w + 20}" '
           f'height="{height}" font-family="sans-serif" font-size="12">']
    for tick, label in ticks(span):  # the time axis
        x = label_w + bar_w * tick / span
        out.append(f'<line x1="{x:.0f}" y1="18" x2="{x:.0f}" y2="{height}" stroke="#e0e0e0"/>'
                   f'<text x="{x:.0f}" y="12" text-anchor="middle" fill="#666">{label}</text>')

    def bar(start: float, end: float, y: float, colour: str, opacity: float, tip: str) -> str:
        x = label_w + bar_w * (start - t0) / span
        w = max(2.0, bar_w * (end - start) / span)
        return (f'<rect x="{x:.1f}" y="{y:.0f}" width="{w:.1f}" height="{row_h - 8}" rx="3" fill="{colour}" '
                f'fill-opacity="{opacity}"><title>{html.escape(tip)}</title></rect>')

    for row, (name, info) in enumerate(steps):
        y = 24 + row * row_h
        out.append(f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{html.escape(name)}</text>')
        for a in info.get("attempts", [])[:-1]:
            if a.get("start") and a.get("end"):
                out.append(bar(float(a["start"]), float(a["end"]), y, COLOURS["failed"], 0.35,
                               f"{name}: attempt {a['attempt']} {a['status']}"))
        start = float(info["start"])
        end = float(info.get("end") or manifest.get("ended") or start)
        status = info.get("status", "?")
        out.append(bar(start, end, y, COLOURS.get(status, GREY), 0.9, f"{name}: {status}, {end - start:.1f}s"))
    return "\n".join(out + ["</svg>"]) + "\n"


# ---------------------------------------------------------------- the page


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def mlflow_run(log: Path) -> str:
    try:
        found = RUN_ID.findall(log.read_text(errors="replace"))
    except OSError:
        return ""
    return found[-1] if found else ""


def _stamp(t: float | None) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds") if t else "-"


def sweep_tables(steps: dict[str, Any]) -> str:
    """Each sweep's points: their params and metric, the best marked."""
    parts = []
    for name, info in steps.items():
        if not info.get("points"):
            continue
        metric = info["metric"]
        keys = list(info["points"][0]["params"])
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["point", *keys, metric, "status"])
        rows = []
        for p in info["points"]:
            best = p["point"] == info.get("best")
            cells = [html.escape(p["point"]) + (' <span class="best">best</span>' if best else ""),
                     *(html.escape(str(p["params"].get(k))) for k in keys),
                     "-" if p.get(metric) is None else f"{p[metric]:.6g}", html.escape(str(p.get("status")))]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append(f'<h2>Sweep {html.escape(name)}: best by {html.escape(metric)} ({info["mode"]})</h2>\n'
                     f'<table class="sweep"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return "\n".join(parts)


STYLE = """body { font-family: sans-serif; margin: 24px; color: #212121; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
.st { color: #fff; border-radius: 4px; padding: 1px 6px; white-space: nowrap; }
.why { color: #c62828; font-size: 12px; margin-top: 3px; } .id { color: #757575; font-size: 11px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; font-size: 13px; }
dt { color: #757575; } dd { margin: 0; }
pre.tail { font-size: 11px; background: #fafafa; border-left: 3px solid #c62828; padding: 4px 8px; margin: 4px 0 0;
  max-width: 60em; overflow-x: auto; white-space: pre-wrap; }
.best { background: #2e7d32; color: #fff; border-radius: 4px; padding: 0 5px; font-size: 11px; }"""


def _tail(log: str | None, lines: int = 12) -> str:
    """The last lines of a failed step's log, as a block under its status."""
    try:
        tail = Path(log).read_text(errors="replace").splitlines()[-lines:] if log else []
    except OSError:
        return ""
    return f'<pre class="tail">{html.escape(chr(10).join(tail))}</pre>' if tail else ""


def _row(name: str, info: dict[str, Any], status: str, here: Path, runs: Path | None) -> str:
    """A step's row of the table: status (and why, or the run that made an up-to-date output), duration, CPU, peak
    memory, image, attempts, logs, MLflow run."""
    used, limits = info.get("usage") or {}, info.get("limits") or {}
    start, end = info.get("start"), info.get("end")
    duration = f"{end - start:.1f} s" if start and end else "-"
    cpu = "-"
    if used.get("cpu_s") is not None:
        share = f" ({used['cpu_s'] / used['wall_s']:.2f} CPUs)" if used.get("wall_s") else ""
        cpu = f"{used['cpu_s']:.1f} s{share}"
    peak = _size(used.get("peak_memory"))
    if limits.get("memory"):
        peak += f" / {limits['memory']}"
    log = info.get("log")
    links = []
    for a in info.get("attempts", [])[:-1]:
        links.append(f'<a href="{html.escape(os.path.relpath(a["log"], here))}">attempt {a["attempt"]}</a>')
    if log:
        links.append(f'<a href="{html.escape(os.path.relpath(log, here))}">log</a>')
    run = mlflow_run(Path(log)) if log else ""
    why = info.get("reason") or (f"killed: {used['killed']}" if used.get("killed") else "") or (
        f"exit code {info['exit_code']}" if status == "failed" and info.get("exit_code") else "")
    note = f'<div class="why">{html.escape(why)}</div>' if why else ""
    note += _tail(log) if status == "failed" else ""
    note += f'<div class="id">ran: {html.escape(info["why"])}</div>' if info.get("why") and status != "failed" else ""
    made = info.get("made_by")
    if made and runs is not None:  # its output is from an earlier run: that run's log of the step
        made_log = html.escape(os.path.relpath(runs / made / f"{name}.log", here))
        note += f'<div class="id">made by run <a href="{made_log}">{html.escape(made)}</a></div>'
    return "<tr>" + "".join(f"<td>{c}</td>" for c in (
        html.escape(name),
        f'<span class="st" style="background:{COLOURS.get(status, GREY)}">{html.escape(status)}</span>{note}',
        duration, cpu, html.escape(peak),
        f'<code>{html.escape(info.get("image", "-"))}</code>' +
        (f'<div class="id">{html.escape(info["image_id"][:19])}</div>' if info.get("image_id") else ""),
        str(len(info.get("attempts") or []) or (1 if start else 0)),
        " ".join(links) or "-", f"<code>{run}</code>" if run else "-")) + "</tr>"


def render(manifest: dict[str, Any], edges: list[Edge], out: Path) -> str:
    steps = manifest.get("steps", {})
    names = list(manifest.get("selected") or steps)
    status = {n: steps.get(n, {}).get("status", "not run") for n in names}
    here = out.resolve().parent
    runs = Path(manifest["root"], ".itwin-run", "runs") if manifest.get("root") else None
    rows = [_row(name, steps.get(name, {}), status[name], here, runs) for name in names]
    title = f"itwin-run {manifest.get('run_id', '?')}"
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{STYLE}
</style></head><body>
<h1>{html.escape(title)}: {html.escape(manifest.get('status', '?'))}</h1>
<dl>
<dt>workflow</dt><dd><code>{html.escape(str(manifest.get('workflow', '?')))}</code></dd>
<dt>engine / executor</dt><dd>{html.escape(manifest.get('engine', '?'))} / {html.escape(manifest.get('executor', '?'))}</dd>
<dt>started</dt><dd>{_stamp(manifest.get('started'))}</dd><dt>ended</dt><dd>{_stamp(manifest.get('ended'))}</dd>
<dt>steps</dt><dd>{html.escape(summary)}</dd>
{f"<dt>error</dt><dd>{html.escape(manifest['error'])}</dd>" if manifest.get('error') else ""}
</dl>
<h2>Workflow</h2>
{to_svg(names, edges, status)}
<h2>Timeline</h2>
{timeline_svg(manifest)}
<h2>Steps</h2>
<table id="steps"><thead><tr><th>step</th><th>status</th><th>duration</th><th>CPU time</th><th>peak memory</th>
<th>image</th><th>attempts</th><th>logs</th><th>MLflow run</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{sweep_tables(steps)}
</body></html>
"""


def write(where: Path, run_id: str | None, output: Path | None) -> Path:
    """Write the report of a run of the project at `where` (default: its latest) to output (default: beside the
    run's manifest); where it went."""
    from runner.state import State

    state = State(where)
    m = state.manifest(run_id)
    dest = output or state.root / ".itwin-run" / "runs" / m["run_id"] / "report.html"
    edges = [tuple(e) for e in m.get("dag", [])]
    if "dag" not in m:  # a run recorded before manifests kept the DAG: the workflow file as it is now
        try:
            from runner import workflow as wfmod

            edges = wfmod.load(m["workflow"], m.get("root")).edges()
        except (UserError, KeyError):
            edges = []
    try:
        dest.write_text(render(m, edges, dest), encoding="utf-8")  # type: ignore[arg-type]
    except OSError as exc:
        raise UserError(f"cannot write the report to {dest}: {exc.strerror}") from None
    return dest


def graph(path: Path, root: Path | None, fmt: str) -> str:
    """`itwin-run dag`: a workflow file's steps and the datasets between them, as dot, mermaid or svg."""
    from runner import workflow as wfmod

    render = {"dot": to_dot, "mermaid": to_mermaid, "svg": to_svg}.get(fmt)
    if render is None:
        raise UsageError(f"--format {fmt}: one of dot, mermaid, svg")
    wf = wfmod.load(path, root)
    return render([s.name for s in wf.steps], wf.edges())
