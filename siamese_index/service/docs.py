"""The self-contained docs page at /docs: every route of the OpenAPI schema, its key and fields,
as plain HTML (no script, no CDN: it works offline)."""

from __future__ import annotations

import html
from typing import Any

from siamese_index.service.settings import API_KEY_HEADER

_DOCS_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.05rem;margin:1.6rem 0 .3rem}code{background:#f3f3f3;padding:0 .25rem}
.m{display:inline-block;min-width:4.2rem;font-weight:bold}.role{color:#666;font-size:.9rem}
table{border-collapse:collapse;margin:.3rem 0 0 1rem;font-size:.9rem}td,th{border:1px solid #ddd;padding:.15rem .5rem;text-align:left}
p{margin:.3rem 0}"""


Row = tuple[str, str, bool, str]  # field, where / type, required, description


def _fields(comps: dict[str, Any], s: dict[str, Any]) -> list[Row]:
    """The fields of a request body's schema (resolving one $ref)."""
    if "$ref" in s:
        s = comps.get(s["$ref"].rsplit("/", 1)[-1], {})
    req = set(s.get("required", []))
    out = []
    for name, p in s.get("properties", {}).items():
        kind = p.get("type") or " | ".join(x.get("type", "?") for x in p.get("anyOf", [])) or "object"
        item = p.get("items", {}) if p.get("type") == "array" else p
        if item.get("format") == "binary" or "contentMediaType" in item:
            kind = "files" if item is not p else "file"
        out.append((name, kind, name in req, p.get("description", "")))
    return out


def _rows(comps: dict[str, Any], op: dict[str, Any]) -> list[Row]:
    """An operation's parameters (but the key header) and request-body fields."""
    rows: list[Row] = [
        (
            p["name"],
            f"{p.get('in', '')} {p.get('schema', {}).get('type', '')}",
            p.get("required", False),
            p.get("description", ""),
        )
        for p in op.get("parameters", [])
        if p.get("name") != API_KEY_HEADER
    ]
    body = op.get("requestBody", {}).get("content", {})
    for ctype, spec in body.items():
        rows += [(n, f"{ctype.split('/')[-1]} {k}", r, d) for n, k, r, d in _fields(comps, spec.get("schema", {}))]
    return rows


def _operation(path: str, method: str, op: dict[str, Any], comps: dict[str, Any]) -> list[str]:
    """The HTML of one route: method, path, the key it needs, summary, description, fields."""
    esc = html.escape
    role = op.get("x-required-role", "none")
    parts = [
        f"<h2><span class='m'>{esc(method.upper())}</span> <code>{esc(path)}</code> "
        f"<span class='role'>key: {esc(role)}</span></h2>",
        f"<p>{esc(op.get('summary', ''))}</p>",
    ]
    desc = (op.get("description") or "").strip()
    if desc:
        parts.append(f"<p>{esc(desc.split(chr(10) + chr(10))[0])}</p>")
    rows = _rows(comps, op)
    if rows:
        parts.append("<table><tr><th>field</th><th>where / type</th><th>required</th><th></th></tr>")
        parts += [
            f"<tr><td><code>{esc(str(n))}</code></td><td>{esc(str(w))}</td><td>{'yes' if r else ''}</td>"
            f"<td>{esc(str(d))}</td></tr>"
            for n, w, r, d in rows
        ]
        parts.append("</table>")
    return parts


def docs_html(schema: dict[str, Any]) -> str:
    """A self-contained page (no script, no CDN) listing every route from the OpenAPI schema."""
    esc = html.escape
    comps = schema.get("components", {}).get("schemas", {})
    info = schema["info"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(info['title'])}</title>"
        f"<style>{_DOCS_CSS}</style></head><body>",
        f"<h1>{esc(info['title'])} {esc(info.get('version', ''))}</h1>",
        f"<p>{esc(info.get('description', ''))}</p>",
        f"<p>Machine-readable schema: <a href='/openapi.json'>/openapi.json</a>. "
        f"Send keys in the <code>{API_KEY_HEADER}</code> header.</p>",
    ]
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            parts += _operation(path, method, op, comps)
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["docs_html"]
