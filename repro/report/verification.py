"""Write a verification result as ``report.md`` and one self-contained ``report.html``.

The HTML page carries everything inline (CSS and SVG charts drawn by matplotlib's Agg/SVG
backend): no scripts, stylesheets, fonts or images are fetched, so the page can be attached to
an issue or archived next to the logs and still render years later. Charts:

* the run's loss curve(s) against the reference curve, when one was given;
* measured throughput against every throughput claim, the claim's tolerance band drawn as an
  error bar, so conflicting published figures (Fast-LLM's four) are visible side by side.
"""

from __future__ import annotations

import html
import io
import math
import re
from pathlib import Path
from typing import Any

from repro.verify.checks import FAIL, NOT_MEASURED, PASS
from repro.base.errors import ReproError
from repro.verify.verifier import exit_code

_STATUS_COLOUR = {PASS: "#1a7f37", FAIL: "#cf222e", NOT_MEASURED: "#6e7781"}


def write_report(result, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (created if missing)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReproError(f"--report: {out}: cannot create directory ({exc.strerror})") from None
    code = exit_code(result)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(result, code), encoding="utf-8")
    html_path.write_text(render_html(result, code), encoding="utf-8")
    return md_path, html_path


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:.6g}"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(result, code: int) -> str:
    counts = result.counts()
    lines = [
        f"# repro verify: {result.recipe}",
        "",
        f"- runs: {result.n_runs}",
        f"- hardware: {result.hardware or 'unknown'}",
        f"- environment key: {result.env_key or '—'}",
        f"- verdict: **{counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[NOT_MEASURED]} NOT-MEASURED** "
        f"(exit {code}; NOT-MEASURED is never a pass)",
        "",
        f"> {result.notes}",
        "",
        "| status | claim | measured | expected | units | tolerance | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.results:
        status = r.status if r.used_by_verdict else f"{r.status} (info)"
        lines.append("| " + " | ".join(_md_cell(x) for x in (
            status, r.claim_id, _fmt(r.check.measured), _fmt(r.check.expected), r.units, r.check.tolerance,
            r.check.source)) + " |")
    lines += ["", "## Claims", ""]
    for r in result.results:
        flags = [f for f, on in (("secondary source", r.secondary), ("not used by the verdict", not r.used_by_verdict)) if on]
        lines.append(f"### {r.claim_id} — {r.status}" + (f" ({'; '.join(flags)})" if flags else ""))
        lines.append("")
        lines.append(f"- definition: {r.definition}")
        lines.append(f"- result: {r.check.message}")
        lines.append(f"- source: {r.check.source}")
        lines.append(f"- tolerance: {r.check.tolerance}" + (f" — {r.tolerance_rationale}" if r.tolerance_rationale else ""))
        if r.conflicts_with:
            lines.append(f"- conflicts with: {', '.join(r.conflicts_with)}")
        for warning in r.check.warnings:
            lines.append(f"- warning: {warning}")
        lines.append("")
    if result.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in result.warnings] + [""]
    lines.append("Charts (loss curve vs reference, throughput vs claims) are in report.html.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#1f2328;line-height:1.45;padding:0 1rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{border-bottom:1px solid #d0d7de;padding:.35rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}.status{font-weight:600;color:#fff;border-radius:4px;
padding:.1rem .4rem;white-space:nowrap}.info{opacity:.6}.muted{color:#57606a}details{margin:.4rem 0}
figure{margin:1rem 0}svg{max-width:100%;height:auto}
td.src{max-width:22rem;overflow-wrap:anywhere;word-break:break-word}a{color:#0969da}
"""

_URL = re.compile(r"https?://[^\s<>\"')]+")
#: RepoSource.cite(): owner/name/path@<40 hex> [L12-L20 or a row name]
_REPO_CITE = re.compile(r"^([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)/(\S+)@([0-9a-f]{40})(?: (L\d+(?:-L\d+)?))?")


def source_html(text: str) -> str:
    """A claim's source, escaped, with URLs as links and a pinned repository citation linked to
    GitHub at its commit (and lines); everything else stays text."""
    esc = html.escape
    cite = _REPO_CITE.match(text)
    if cite:
        repo, path, commit, lines = cite.groups()
        anchor = f"#{lines}" if lines else ""
        url = f"https://github.com/{repo}/blob/{commit}/{path}{anchor}"
        head = text[:cite.end()]
        return f'<a href="{esc(url)}">{esc(head)}</a>{source_html(text[cite.end():]) if text[cite.end():] else ""}'
    out, last = [], 0
    for m in _URL.finditer(text):
        url = m.group(0).rstrip(".,;")
        out.append(esc(text[last:m.start()]))
        out.append(f'<a href="{esc(url)}">{esc(url)}</a>')
        last = m.start() + len(url)
    out.append(esc(text[last:]))
    return "".join(out)


def _badge(status: str) -> str:
    colour = _STATUS_COLOUR.get(status, "#6e7781")
    return f'<span class="status" style="background:{colour}">{html.escape(status)}</span>'


def render_html(result, code: int) -> str:
    esc = html.escape
    counts = result.counts()
    rows = []
    for r in result.results:
        cls = "" if r.used_by_verdict else ' class="info"'
        note = "" if r.used_by_verdict else ' <span class="muted">(info)</span>'
        rows.append(
            f"<tr{cls}><td>{_badge(r.status)}{note}</td><td>{esc(r.claim_id)}</td>"
            f"<td>{esc(_fmt(r.check.measured))}</td><td>{esc(_fmt(r.check.expected))}</td><td>{esc(r.units)}</td>"
            f"<td>{esc(r.check.tolerance)}</td><td class=\"src\">{source_html(r.check.source)}</td></tr>"
        )
    details = []
    for r in result.results:
        extra = ""
        if r.conflicts_with:
            extra += f"<li>conflicts with: {esc(', '.join(r.conflicts_with))}</li>"
        extra += "".join(f"<li>warning: {esc(w)}</li>" for w in r.check.warnings)
        flags = " (secondary source)" if r.secondary else ""
        details.append(
            f"<details><summary>{_badge(r.status)} <b>{esc(r.claim_id)}</b>{esc(flags)}: {esc(r.check.message)}"
            f"</summary><ul><li>definition: {esc(r.definition)}</li><li>source: {source_html(r.check.source)}</li>"
            f"<li>tolerance: {esc(r.check.tolerance)} — {esc(r.tolerance_rationale)}</li>{extra}</ul></details>"
        )
    warnings = "".join(f"<li>{esc(w)}</li>" for w in result.warnings)
    charts = _charts(result)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>repro verify: {esc(result.recipe)}</title>
<style>{_CSS}</style></head><body>
<h1>repro verify: {esc(result.recipe)}</h1>
<p>{result.n_runs} run(s) · hardware {esc(result.hardware or 'unknown')} · environment key {esc(result.env_key or '—')}</p>
<p>Verdict: {_badge(PASS)} {counts[PASS]} &nbsp; {_badge(FAIL)} {counts[FAIL]} &nbsp; {_badge(NOT_MEASURED)} {counts[NOT_MEASURED]}
 &nbsp; (exit {code}; NOT-MEASURED is never a pass)</p>
<p class="muted">{esc(result.notes)}</p>
<table><thead><tr><th>status</th><th>claim</th><th>measured</th><th>expected</th><th>units</th><th>tolerance</th>
<th>source</th></tr></thead><tbody>{''.join(rows)}</tbody></table>
<h2>Charts</h2>{charts}
<h2>Claims</h2>{''.join(details)}
{f'<h2>Warnings</h2><ul>{warnings}</ul>' if warnings else ''}
</body></html>
"""


def _charts(result) -> str:
    try:
        import matplotlib
    except ImportError:
        return '<p class="muted">matplotlib is not installed (pip install repro[verify]); charts omitted.</p>'
    matplotlib.use("Agg", force=True)
    parts = [_loss_chart(result), _throughput_chart(result)]
    return "".join(p for p in parts if p)


def _svg(fig) -> str:
    """A figure as inline SVG text: no XML prolog, text kept as text, deterministic ids."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    # No Date/Creator/RDF block: the page stays byte-stable and names no external URL.
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _rc():
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "repro-report", "font.size": 9})


def _loss_chart(result) -> str:
    if not result.curves and not result.reference:
        return '<p class="muted">No loss was logged, so there is no curve to draw.</p>'
    import matplotlib.pyplot as plt

    with _rc():
        fig, ax = plt.subplots(figsize=(8, 3.6))
        if result.reference:
            ax.plot(result.reference["steps"], result.reference["values"], color="black", lw=1.6,
                    label=f"reference ({result.reference['source']})")
        for curve in result.curves:
            ax.plot(curve["steps"], curve["values"], lw=1.0, alpha=0.85, label=curve["label"])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title("loss: run vs reference" if result.reference else "loss (no reference curve supplied)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        svg = _svg(fig)
    return f"<figure>{svg}<figcaption>Training loss per optimizer step.</figcaption></figure>"


def _throughput_chart(result) -> str:
    claims = [r for r in result.results if r.kind == "throughput" and r.check.expected is not None]
    if not claims:
        return '<p class="muted">This recipe has no published throughput claim.</p>'
    import matplotlib.pyplot as plt

    by_units: dict[str, list] = {}
    for r in claims:
        by_units.setdefault(r.units, []).append(r)
    with _rc():
        height = 1.4 + 0.55 * max(map(len, by_units.values()))
        fig, axes = plt.subplots(1, len(by_units), figsize=(4.8 * len(by_units), height), squeeze=False,
                                 layout="constrained")
        for ax, (units, rs) in zip(axes[0], by_units.items()):
            ys = list(range(len(rs)))
            for y, r in zip(ys, rs):
                expected = r.check.expected
                lower, upper = r.check.details.get("lower"), r.check.details.get("upper")
                xerr = None
                if lower is not None or upper is not None:  # one-sided bounds draw one arm only
                    xerr = [[expected - lower if lower is not None else 0.0],
                            [upper - expected if upper is not None else 0.0]]
                colour = "#0969da" if r.used_by_verdict else "#8c959f"
                ax.errorbar([expected], [y], xerr=xerr, fmt="s", color=colour, capsize=4,
                            label="published ± tolerance" if y == 0 else None)
                if r.check.measured is not None and math.isfinite(r.check.measured):
                    ax.plot([r.check.measured], [y], marker="o", color=_STATUS_COLOUR[r.status], ms=8,
                            linestyle="none", label="measured (steady-state median)" if y == 0 else None)
            ax.set_yticks(ys)
            ax.set_yticklabels([r.claim_id + ("" if r.used_by_verdict else " (info)") for r in rs])
            ax.set_ylim(len(rs) - 0.5, -0.5)
            ax.set_xlabel(units)
            ax.grid(axis="x", alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
        fig.suptitle("measured throughput vs published claims")
        svg = _svg(fig)
    return (f"<figure>{svg}<figcaption>Squares: published figures with their tolerance (grey: recorded but not used "
            f"by the verdict). Dots: the run, coloured by status. Cross-hardware claims show the published figure "
            f"scaled by the ratio of dense peaks.</figcaption></figure>")
