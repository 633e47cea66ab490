"""The API docs page (``GET /api/v1/docs``): the OpenAPI document rendered as one self-contained page.

Rendered on the server from the same document ``/openapi.json`` serves, so the page cannot drift from
the contract, and it works with no network: no script, no font, no image, nothing fetched from
anywhere, only its own inline stylesheet. A browser enforces that with :data:`DOCS_HEADERS`: the
Content-Security-Policy allows nothing but that one stylesheet, named by its sha256 (a hash, not
``'unsafe-inline'``: even a string that slipped through escaping could add no style, script or
request). Every text taken from the document is escaped (``html.escape``) and every anchor id is
reduced to ``[A-Za-z0-9_.-]``, so a hostile summary, path or schema name stays text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

__all__ = ["DOCS_CSP", "DOCS_HEADERS", "render_docs"]

_CSS = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--code:#f6f8fa;--link:#0a58ca}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--line:#3d444d;--code:#161b22;--link:#6cb6ff}}
body{font:15px/1.5 system-ui,sans-serif;color:var(--fg);margin:0 auto;max-width:72rem;padding:1rem 1.5rem}
a{color:var(--link)}
code,pre{font:13px/1.4 ui-monospace,monospace;background:var(--code);border-radius:4px;padding:0 .25em}
pre{padding:.5em;overflow-x:auto;white-space:pre-wrap}
h2{border-bottom:1px solid var(--line);padding-bottom:.25em;margin-top:2.5rem}
h3{margin:0}
h3 code{font-size:1rem}
h4{margin:1rem 0 .25rem;font-size:.95rem}
article{border:1px solid var(--line);border-radius:6px;padding:.75rem 1rem;margin:1rem 0}
table{border-collapse:collapse;width:100%;margin:.25rem 0}
th,td{border-top:1px solid var(--line);padding:.25rem .5rem;text-align:left;vertical-align:top}
th{font-weight:600;font-size:.85rem;color:var(--muted)}
td table{margin:0}
.method{display:inline-block;min-width:4.5em;font-weight:700}
.anchor{color:var(--muted);text-decoration:none;margin-left:.5em}
.muted,.rule{color:var(--muted)}
nav ul{list-style:none;padding-left:1rem}
nav li{margin:.1rem 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:.5rem 0}
dt{color:var(--muted)}
dd{margin:0}
"""

DOCS_CSP = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Nothing may load or run but the page's own inline stylesheet (``base-uri``, ``form-action`` and
``frame-ancestors`` do not fall back to ``default-src``, so they are named)."""

DOCS_HEADERS: Mapping[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": DOCS_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_SCHEMA_PREFIX = "#/components/schemas/"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# Shown beside a type, in this order; anything else a schema says is shown as JSON ("further rules").
_CONSTRAINTS = (
    "format", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "uniqueItems", "default",
)  # fmt: skip
_SHOWN = {"type", "$ref", "description", "properties", "required", "additionalProperties", "items", "enum", "const"}
_SHOWN |= {"anyOf", "oneOf", *_CONSTRAINTS}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _slug(value: object) -> str:
    """An anchor id any text can become: nothing but ``[A-Za-z0-9_.-]``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", str(value)) or "-"


def _schema_name(ref: object) -> str | None:
    if isinstance(ref, str) and ref.startswith(_SCHEMA_PREFIX):
        return ref[len(_SCHEMA_PREFIX) :]
    return None


def _link(name: str) -> str:
    return f'<a href="#schema-{_slug(name)}">{_e(name)}</a>'


def _json(value: Any) -> str:
    """Compact JSON, escaped, with every schema reference a link."""
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            name = _schema_name(item) if key == "$ref" else None
            shown = _link(name) if name is not None else _json(item)
            items.append(f"{_e(json.dumps(str(key), ensure_ascii=False))}: {shown}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json(item) for item in value) + "]"
    return _e(json.dumps(value, ensure_ascii=False))


def _constraints(schema: Mapping[str, Any]) -> str:
    shown = [f"{_e(key)}: <code>{_json(schema[key])}</code>" for key in _CONSTRAINTS if key in schema]
    return f' <span class="muted">({", ".join(shown)})</span>' if shown else ""


def _type(schema: Any) -> str:
    """A schema as a short type expression; an object's fields as a table; any other rule as JSON."""
    if not isinstance(schema, Mapping):
        return f"<code>{_json(schema)}</code>"
    if not schema:
        return "any value"
    is_object = isinstance(schema.get("properties"), Mapping)
    parts: list[str] = []
    name = _schema_name(schema.get("$ref"))
    if name is not None:
        parts.append(_link(name))
    if "const" in schema:
        parts.append(f"<code>{_json(schema['const'])}</code>")
    elif isinstance(schema.get("enum"), list):
        parts.append("one of " + ", ".join(f"<code>{_json(v)}</code>" for v in schema["enum"]))
    elif "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        text = " or ".join(_e(kind) for kind in kinds)
        if "items" in schema:
            text += f" of {_type(schema['items'])}"
        parts.append(text)
    elif "items" in schema:
        parts.append(f"array of {_type(schema['items'])}")
    # Alternatives for a value read as a type; on an object they are rules about its fields (below).
    if not is_object:
        if isinstance(schema.get("anyOf"), list):
            parts.append(" or ".join(_type(option) for option in schema["anyOf"]))
        if isinstance(schema.get("oneOf"), list):
            parts.append("exactly one of: " + " | ".join(_type(option) for option in schema["oneOf"]))
    out = " ".join(parts) + _constraints(schema)
    if is_object:
        out += _fields(schema)
    rest = {k: v for k, v in schema.items() if k not in _SHOWN or (is_object and k in ("anyOf", "oneOf"))}
    if rest:
        out += f'<div class="rule">further rules: <code>{_json(rest)}</code></div>'
    return out


def _fields(schema: Mapping[str, Any]) -> str:
    required = set(schema.get("required") or ())
    rows = []
    for name, prop in schema["properties"].items():
        need = "required" if name in required else "optional"
        description = prop.get("description", "") if isinstance(prop, Mapping) else ""
        rows.append(
            f'<tr><td><code>{_e(name)}</code> <span class="muted">{need}</span></td>'
            f"<td>{_type(prop)}</td><td>{_e(description)}</td></tr>"
        )
    closed = schema.get("additionalProperties") is False
    note = '<div class="muted">no other fields</div>' if closed else ""
    return f"<table><tr><th>field</th><th>type</th><th>description</th></tr>{''.join(rows)}</table>{note}"


def _auth(op: Mapping[str, Any], schemes: Mapping[str, Any]) -> str:
    security = op.get("security")
    if not security:
        return "none: public"
    ways = []
    for requirement in security:
        for name in requirement:
            scheme = schemes.get(name, {})
            if scheme.get("type") == "http" and scheme.get("scheme") == "bearer":
                ways.append("<code>Authorization: Bearer &lt;token&gt;</code>")
            elif scheme.get("type") == "apiKey":
                ways.append(f"<code>{_e(scheme.get('name', name))}</code> {_e(scheme.get('in', ''))}")
            else:
                ways.append(_e(name))
    text = " or ".join(ways)
    claim = op.get("x-required-claim")
    return text + (f"; needs the claim <code>{_e(claim)}</code>" if claim else "")


def _parameters(params: Iterable[Mapping[str, Any]]) -> str:
    rows = [
        f"<tr><td><code>{_e(p.get('name', ''))}</code></td><td>{_e(p.get('in', ''))}</td>"
        f"<td>{'required' if p.get('required') else 'optional'}</td><td>{_type(p.get('schema', {}))}</td>"
        f"<td>{_e(p.get('description', ''))}</td></tr>"
        for p in params
    ]
    if not rows:
        return ""
    head = "<tr><th>name</th><th>in</th><th></th><th>type</th><th>description</th></tr>"
    return f"<h4>Parameters</h4><table>{head}{''.join(rows)}</table>"


def _content(content: Mapping[str, Any]) -> str:
    return "<br>".join(f"<code>{_e(media)}</code> {_type(body.get('schema', {}))}" for media, body in content.items())


def _request_body(body: Mapping[str, Any] | None) -> str:
    if not body:
        return ""
    need = "required" if body.get("required") else "optional (an empty body reads as <code>{}</code>)"
    return f'<h4>Request body</h4><p class="muted">{need}</p>{_content(body.get("content", {}))}'


_NO_BODY = '<span class="muted">no body</span>'


def _responses(responses: Mapping[str, Any]) -> str:
    rows = []
    for status, answer in responses.items():
        headers = ", ".join(f"<code>{_e(h)}</code>" for h in answer.get("headers", {}))
        rows.append(
            f"<tr><td><code>{_e(status)}</code></td><td>{_e(answer.get('description', ''))}</td>"
            f"<td>{_content(answer.get('content', {})) or _NO_BODY}</td>"
            f"<td>{headers}</td></tr>"
        )
    head = "<tr><th>status</th><th>meaning</th><th>body</th><th>headers</th></tr>"
    return f"<h4>Responses</h4><table>{head}{''.join(rows)}</table>"


def _anchor(method: str, path: str, op: Mapping[str, Any]) -> str:
    return "op-" + _slug(op.get("operationId") or f"{method}-{path}")


def _operation(method: str, path: str, op: Mapping[str, Any], schemes: Mapping[str, Any]) -> str:
    anchor = _anchor(method, path, op)
    return (
        f'<article class="op" id="{anchor}"><h3><span class="method">{_e(method.upper())}</span> '
        f'<code class="path">{_e(path)}</code><a class="anchor" href="#{anchor}" title="link to this">#</a></h3>'
        f"<p>{_e(op.get('summary', ''))}</p>"
        f"<dl><dt>credentials</dt><dd>{_auth(op, schemes)}</dd></dl>"
        f"{_parameters(op.get('parameters', ()))}{_request_body(op.get('requestBody'))}"
        f"{_responses(op.get('responses', {}))}</article>"
    )


def _operations(document: Mapping[str, Any]) -> list[tuple[str, str, str, Mapping[str, Any]]]:
    """(tag, method, path, operation) in the document's order."""
    found = []
    for path, item in document.get("paths", {}).items():
        for method, op in item.items():
            if method in _METHODS and isinstance(op, Mapping):
                found.append((str((op.get("tags") or ["other"])[0]), method, path, op))
    return found


def render_docs(document: Mapping[str, Any]) -> str:
    """The whole page, grouped by tag (in order of first use), then every schema."""
    info = document.get("info", {})
    schemes = document.get("components", {}).get("securitySchemes", {})
    schemas = document.get("components", {}).get("schemas", {})
    by_tag: dict[str, list[tuple[str, str, Mapping[str, Any]]]] = {}
    for tag, method, path, op in _operations(document):
        by_tag.setdefault(tag, []).append((method, path, op))

    toc = []
    sections = []
    for tag, ops in by_tag.items():
        items = "".join(
            f'<li><a href="#{_anchor(m, p, op)}"><span class="method">{_e(m.upper())}</span> {_e(p)}</a></li>'
            for m, p, op in ops
        )
        toc.append(f'<li><a href="#tag-{_slug(tag)}">{_e(tag)}</a><ul>{items}</ul></li>')
        body = "".join(_operation(m, p, op, schemes) for m, p, op in ops)
        sections.append(f'<section id="tag-{_slug(tag)}"><h2>{_e(tag)}</h2>{body}</section>')
    toc.append('<li><a href="#schemas">Schemas</a></li>')
    schema_articles = "".join(
        f'<article class="schema" id="schema-{_slug(name)}"><h3>{_e(name)}'
        f'<a class="anchor" href="#schema-{_slug(name)}" title="link to this">#</a></h3>'
        f"<p>{_e(schema.get('description', '') if isinstance(schema, Mapping) else '')}</p>{_type(schema)}</article>"
        for name, schema in schemas.items()
    )
    title = _e(info.get("title", "API"))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{title}</h1><p class="muted">version {_e(info.get("version", ""))} · OpenAPI '
        f"{_e(document.get('openapi', ''))} · the same document as JSON: "
        '<a href="openapi.json">openapi.json</a></p>'
        f"<p>{_e(info.get('description', ''))}</p></header>"
        f"<nav><h2>Contents</h2><ul>{''.join(toc)}</ul></nav>"
        f'<main>{"".join(sections)}<section id="schemas"><h2>Schemas</h2>{schema_articles}</section></main>'
        "</body></html>"
    )
