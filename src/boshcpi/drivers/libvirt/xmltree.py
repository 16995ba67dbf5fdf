"""The little of ElementTree the libvirt driver needs, on `pyexpat` alone, and XML escaping.

`xml.etree.ElementTree` costs about 13 ms of imports a call (re, contextlib, ElementPath, ...) and
`xml.sax.saxutils` about 40 ms more (it pulls in urllib.request, http.client and email); the CPI starts
once per call. The driver reads libvirt's own XML (domains, volumes, metadata): elements, attributes,
text, child paths. Names carry their namespace as ElementTree writes them, `{uri}name`.
"""

from __future__ import annotations

import pyexpat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


class Element:
    __slots__ = ("attrib", "children", "tag", "text")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag = tag
        self.attrib = attrib
        self.text: str | None = None
        self.children: list[Element] = []

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.attrib.get(key, default)

    def __iter__(self) -> Iterator[Element]:
        return iter(self.children)

    def __len__(self) -> int:
        return len(self.children)

    def iter(self, tag: str | None = None) -> Iterator[Element]:
        """This element and every descendant, in document order (those named `tag`, if given)."""
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            yield from child.iter(tag)

    def findall(self, path: str) -> list[Element]:
        """Descendants along a `a/b/c` path of child names."""
        found = [self]
        for step in path.split("/"):
            found = [c for e in found for c in e.children if c.tag == step]
        return found

    def find(self, path: str) -> Element | None:
        found = self.findall(path)
        return found[0] if found else None


def _name(raw: str) -> str:
    uri, sep, local = raw.rpartition("\x1f")
    return "{" + uri + "}" + local if sep else raw


def fromstring(text: str | bytes) -> Element:
    """Parse an XML document; ValueError for one that is not well-formed."""
    parser = pyexpat.ParserCreate(namespace_separator="\x1f")
    stack: list[Element] = []
    root: list[Element] = []
    texts: list[list[str]] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        el = Element(_name(name), {_name(k): v for k, v in attrs.items()})
        if stack:
            stack[-1].children.append(el)
        else:
            root.append(el)
        stack.append(el)
        texts.append([])

    def end(_: str) -> None:
        el = stack.pop()
        pieces = texts.pop()
        # The text before the first child, as ElementTree's `text`.
        el.text = "".join(pieces) if pieces else None

    def chars(data: str) -> None:
        if stack and not stack[-1].children:
            texts[-1].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(text, True)
    except pyexpat.ExpatError as e:
        raise ValueError(f"not well-formed XML: {e}") from None
    return root[0]


def escape(text: str) -> str:
    """Text for an element's content."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    """An attribute value with its quotes."""
    return '"' + escape(text).replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;") + '"'
