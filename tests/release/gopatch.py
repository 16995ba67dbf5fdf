"""A small implementation of BOSH's go-patch ops (replace, remove) for checking our ops files.

Paths: /key, /key?, /name=value, /name=value?, /-, /index. After the first `?` every later token
is optional too (as in go-patch): missing maps are created, missing list items appended.
"""

from __future__ import annotations

import copy
from typing import Any


class OpError(Exception):
    pass


def _tokens(path: str) -> list[str]:
    if not path.startswith("/"):
        raise OpError(f"path must start with /: {path}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _step(node: Any, token: str, optional: bool, create: bool, path: str) -> tuple[Any, Any]:
    """(container, key) for `token` within `node`; creates it when optional and create."""
    if isinstance(node, list):
        if token == "-":
            return node, len(node)
        if token.isdigit():
            i = int(token)
            if i >= len(node):
                raise OpError(f"{path}: index {i} out of range")
            return node, i
        if "=" in token:
            k, v = token.split("=", 1)
            for i, item in enumerate(node):
                if isinstance(item, dict) and str(item.get(k)) == v:
                    return node, i
            if optional and create:
                node.append({k: v})
                return node, len(node) - 1
            raise OpError(f"{path}: no list item with {k}={v}")
        raise OpError(f"{path}: token {token!r} on a list")
    if isinstance(node, dict):
        if token not in node and not optional:
            raise OpError(f"{path}: missing key {token!r}")
        return node, token
    raise OpError(f"{path}: cannot descend into {type(node).__name__}")


def apply(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        path = op["path"]
        tokens = _tokens(path)
        optional = False
        node = doc
        for n, raw in enumerate(tokens):
            opt_here = raw.endswith("?")
            token = raw[:-1] if opt_here else raw
            optional = optional or opt_here
            last = n == len(tokens) - 1
            container, key = _step(node, token, optional, op["type"] == "replace", path)
            if last:
                if op["type"] == "replace":
                    if isinstance(container, list) and key == len(container):
                        container.append(copy.deepcopy(op["value"]))
                    else:
                        container[key] = copy.deepcopy(op["value"])
                elif op["type"] == "remove":
                    if isinstance(container, dict) and key not in container:
                        if not optional:
                            raise OpError(f"{path}: nothing to remove")
                    else:
                        del container[key]
                else:
                    raise OpError(f"unknown op type {op['type']}")
            else:
                if isinstance(container, dict) and key not in container:
                    if op["type"] == "remove":
                        break
                    container[key] = [] if tokens[n + 1].rstrip("?") == "-" or "=" in tokens[n + 1] else {}
                node = container[key]
    return doc
