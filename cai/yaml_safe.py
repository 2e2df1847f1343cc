"""The one YAML reader of cai: `yaml.safe_load` semantics, with what safe loading still lets through refused.

    data = load_yaml(text, "recipe.yaml")

Aliases (`engine: *engine`, `<<: *defaults` merges) are read, but the document is measured as it would be with
every alias written out: more than `MAX_NODES` values, or nesting deeper than `MAX_DEPTH`, is refused before
anything is built (nested anchors expand exponentially: a 600-byte "billion laughs" document would describe 9^9
strings), and so is an alias inside its own anchor. The measure counts each shared node once per use with
memoisation, so it takes time linear in the document, not in its expansion. Also refused: duplicate keys (YAML
says they are an error; PyYAML silently keeps the last). Every refusal is a `YAMLInputError` naming the source
and line. Config files, recipes, constitutions and `--engine-arg` values all go through here.
"""

from __future__ import annotations

from typing import Any

import yaml

from cai.errors import UsageError

MAX_DEPTH = 64
MAX_NODES = 100_000
"""Values a document may hold once its aliases are expanded (a large constitution has a few thousand)."""


class YAMLInputError(UsageError):
    """A YAML document cai will not read, with where and why."""


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_document(self):
        node = super().compose_document()
        _check_expanded(node)
        return node

    def compose_node(self, parent, index):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise YAMLInputError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise YAMLInputError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first on "
                                         f"line {seen[key] + 1})")
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: PyYAML reports it below
                pass
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
        return super().construct_mapping(node, deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded(root: yaml.Node | None) -> None:
    """Refuse a document whose alias-expanded form is too big or too deep, or whose alias sits in its own anchor.
    Iterative (no recursion limit), each distinct node visited once."""
    if root is None:
        return
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise YAMLInputError(f"line {node.start_mark.line + 1}: YAML aliases expand this document to more "
                                     f"than {MAX_NODES:,} values; write shared blocks out or make them smaller")
            if depth[key] > MAX_DEPTH:
                raise YAMLInputError(f"line {node.start_mark.line + 1}: YAML aliases nest this document more than "
                                     f"{MAX_DEPTH} levels deep")
            continue
        if key in size:
            continue
        if key in on_path:
            raise YAMLInputError(f"line {node.start_mark.line + 1}: a YAML alias refers to a block that contains it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)


def load_yaml(text: str, source: str = "YAML") -> Any:
    """Parse one YAML (or JSON) document; any problem is a `YAMLInputError` that names `source`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except YAMLInputError as e:
        raise YAMLInputError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise YAMLInputError(f"{source}: not valid YAML ({e})") from None
    except RecursionError:
        raise YAMLInputError(f"{source}: nested too deeply") from None
