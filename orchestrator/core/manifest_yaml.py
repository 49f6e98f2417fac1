"""The one YAML reader of Sweep files, reading them as kubectl does and bounded in size.

Every command that reads a Sweep file (`validate`, `plan`, `run`, `submit`) goes through
`files.read_manifest_file` (the file's bounds, checked from its `stat`) and `load_documents`
here, so they all accept and refuse the same files:

- numbers are read as YAML 1.2's core schema reads them (kubectl's reading): `5e-5` and `1e3`
  are floats, `0o17` and `0x1F` integers, `1_000`, `0b1` and `1:30` strings; `.inf` and `.nan`
  are read as floats and then refused by the spec's JSON check, naming the field; no
  timestamps (an unquoted date is a string, as the apiserver receives it);
- a key that appears twice in one mapping is refused, naming the key and both lines (the
  apiserver's strict decoding refuses duplicate fields);
- empty documents (a trailing or leading `---`) are dropped;
- a file larger than etcd's object limit (`MAX_MANIFEST_BYTES`, 1.5 MiB) is refused before
  it is parsed; a FILE that is not a regular file (a device, a FIFO, a directory) is refused
  from its `stat`, without being opened for reading;
- nesting deeper than `MAX_DEPTH` levels is refused with a message (never a RecursionError),
  and so is a file of more than `MAX_NODES` nodes, written or expanded from aliases (a
  "billion laughs" file is refused after composing its few hundred nodes, long before
  anything is expanded), and an alias that refers to its own ancestor.

Pure: it parses text. Reading the file is `orchestrator.files`'s part.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# etcd's default request limit (--max-request-bytes, 1.5 MiB): no Sweep object can be larger.
MAX_MANIFEST_BYTES = 1536 * 1024
# A Sweep is six levels deep at most; `execution` may carry pod fragments a few levels more.
MAX_DEPTH = 64
# A Sweep is a few hundred YAML nodes (lists hold at most 32 items; the largest spec the model
# takes, every list full, is about 1,700). A file may hold at most this many nodes, written or
# expanded from aliases: the pure-Python parser takes about 10 us per node, so this bounds a
# file's parse (a 1.5 MiB flow list of 750,000 numbers took minutes and 680 MB before).
MAX_NODES = 20_000

_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_KEPT_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", _MERGE_TAG)


class ManifestError(ValueError):
    """A file that cannot be read as a Sweep manifest: `where` is a line/column or 'file'."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


def _mark(node_or_mark: Any) -> str:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    if mark is None:
        return "file"
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 numbers, duplicate keys refused and composition bounded."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ManifestError(
                    _mark(self.peek_event()), f"nested deeper than {MAX_DEPTH} levels"
                )
            if self._nodes > MAX_NODES:
                raise ManifestError(
                    _mark(self.peek_event()), f"more than {MAX_NODES} YAML nodes (a Sweep "
                    "has a few hundred)"
                )
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line)
                except TypeError:
                    continue
                if first != key_node.start_mark.line:
                    raise ManifestError(
                        _mark(key_node),
                        f"duplicate key {key!r} (first at line {first + 1}); a key may "
                        "appear once in a mapping",
                    )
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: Node) -> int:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    try:
        return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)
    except ValueError:  # an explicit `!!int abc`
        raise ManifestError(_mark(node), f"{text!r} is not an integer") from None


def _construct_float(loader: yaml.SafeLoader, node: Node) -> float:
    text = str(loader.construct_scalar(node)).lower()  # type: ignore[arg-type]
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    try:
        return float(text)
    except ValueError:  # an explicit `!!float abc`
        raise ManifestError(_mark(node), f"{text!r} is not a number") from None


for _first, _resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        if _tag in _KEPT_TAGS:
            _Loader.yaml_implicit_resolvers.setdefault(_first, []).append((_tag, _regexp))
_Loader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))
_Loader.add_constructor(_INT_TAG, _construct_int)
_Loader.add_constructor(_FLOAT_TAG, _construct_float)


def _check_expansion(root: Node) -> None:
    """Refuse a node graph whose aliases expand past the bounds (iterative: no recursion)."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded nodes, expanded depth)
    limit = MAX_NODES
    stack: list[tuple[Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            children = _children(node)
            size = 1 + sum(sizes[id(c)][0] for c in children)
            depth = 1 + max((sizes[id(c)][1] for c in children), default=0)
            if size > limit:
                raise ManifestError(
                    _mark(node), f"aliases expand to more than {limit} nodes"
                )
            if depth > MAX_DEPTH:
                raise ManifestError(
                    _mark(node), f"aliases expand to nesting deeper than {MAX_DEPTH} levels"
                )
            sizes[key] = (size, depth)
            continue
        if key in sizes:
            continue
        if key in open_:
            raise ManifestError(_mark(node), "an alias refers to a node that contains it")
        open_.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_documents(text: str) -> list[Any]:
    """The non-empty documents of a YAML text (raises ManifestError naming line/column)."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(
            "file", f"{size} bytes is more than a Sweep may have ({MAX_MANIFEST_BYTES} bytes, "
            "etcd's object limit)"
        )
    documents = []
    loader = None
    try:
        loader = _Loader(text)
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_expansion(node)
            try:
                document = loader.construct_document(node)
            except (ValueError, TypeError, AttributeError, LookupError, OverflowError) as error:
                if isinstance(error, ManifestError):
                    raise
                # An explicit tag whose text its constructor cannot read (`!!timestamp x`).
                raise ManifestError(_mark(node), f"cannot read a value: {error}") from None
            if document is not None:
                documents.append(document)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        raise ManifestError(_mark(mark), f"not valid YAML: {problem}") from None
    except RecursionError:  # a bound above should have caught it first
        raise ManifestError("file", f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents
