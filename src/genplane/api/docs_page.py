"""A self-contained HTML reference rendered from the OpenAPI document.

It loads nothing from other hosts, so it works on an air-gapped deployment too.
"""

from __future__ import annotations

import html
from typing import Any

from genplane.contract.errors import ERRORS

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1b1b1b}
code,pre{font:13px ui-monospace,monospace;background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}
.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.m{font-weight:700;display:inline-block;min-width:4.5rem}
.GET{color:#0a6} .POST{color:#06c} .DELETE{color:#c30}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #eee;padding:.25rem .4rem;text-align:left}
"""


def _params(op: dict[str, Any]) -> str:
    rows = []
    for p in op.get("parameters", []):
        schema = p.get("schema", {})
        bounds = ", ".join(f"{k} {schema[k]}" for k in ("minimum", "maximum", "maxLength") if k in schema)
        rows.append(
            f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
            f"<td>{'yes' if p.get('required') else 'no'}</td><td>{html.escape(bounds)}</td>"
            f"<td>{html.escape(p.get('description', ''))}</td></tr>"
        )
    if not rows:
        return ""
    head = "<tr><th>parameter</th><th>in</th><th>required</th><th>bounds</th><th>description</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def render_docs(spec: dict[str, Any]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>genplane API reference</title>",
        f"<style>{_STYLE}</style></head><body><h1>genplane API reference</h1>",
        "<p>Every operation needs <code>Authorization: Bearer bye_&lt;region&gt;_…</code>. "
        "The machine-readable document is <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.0.3).</p>",
    ]
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            m = method.upper()
            codes = ", ".join(sorted(op.get("responses", {})))
            parts.append(
                f"<div class='op'><span class='m {m}'>{m}</span><code>{html.escape(path)}</code>"
                f"<p>{html.escape(op.get('summary', ''))} — responses: {codes}</p>{_params(op)}</div>"
            )
    parts.append("<h2>Errors</h2><table><tr><th>error</th><th>code</th><th>type</th><th>HTTP</th>"
                 "<th>retryable</th><th>meaning</th></tr>")
    for e in ERRORS.values():
        parts.append(
            f"<tr><td><code>{e.name}</code></td><td>{e.code}</td><td>{e.type}</td><td>{e.http_status}</td>"
            f"<td>{'yes' if e.retryable else 'no'}</td><td>{html.escape(e.message)}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)
