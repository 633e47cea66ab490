"""The API docs page as a browser reads it, for the tests that check it (unit and contract)."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

__all__ = ["ALLOWED_ATTRIBUTES", "ALLOWED_TAGS", "Page", "operations_of"]

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "nav", "main", "section", "article", "h1", "h2",
    "h3", "h4", "p", "ul", "li", "a", "span", "code", "table", "tr", "th", "td", "dl", "dt", "dd", "div", "br",
}  # fmt: skip
"""Every element the page may have: none that runs, embeds or loads anything."""
ALLOWED_ATTRIBUTES = {"lang", "charset", "name", "content", "id", "class", "href", "title"}


def operations_of(document: dict[str, Any]) -> set[str]:
    """``"GET /api/v1/health"`` for every operation of an OpenAPI document."""
    return {f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops}


class Page(HTMLParser):
    """What a browser would build from the page: elements, attributes, text, and each operation's
    heading text ("GET /api/v1/health")."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self.operations: list[str] = []
        self._in: list[str] = []
        self._heading: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "h3" and self._in and self._in[-1] == "article.op":
            self._heading = []
        if tag == "article":
            self._in.append("article." + (dict(attrs).get("class") or ""))
        elif tag not in ("meta", "br"):
            self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3" and self._heading is not None:
            self.operations.append(" ".join("".join(self._heading).replace("#", "").split()))
            self._heading = None
        if self._in:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "style":
            self.styles.append(data)
            return
        self.text.append(data)
        if self._heading is not None:
            self._heading.append(data)

    @property
    def ids(self) -> set[str]:
        return {str(attrs["id"]) for _, attrs in self.tags if attrs.get("id")}

    @property
    def hrefs(self) -> list[str]:
        return [str(attrs["href"]) for _, attrs in self.tags if "href" in attrs]
