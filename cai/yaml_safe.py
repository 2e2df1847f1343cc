"""The one YAML reader of cai: `yaml.safe_load` semantics, with what safe loading still lets through refused.

    data = load_yaml(text, "recipe.yaml")

Refused, each as a `YAMLInputError` naming the source and line: aliases (`*name`, and `<<: *name` merges), since
nested anchors expand exponentially (a 600-byte "billion laughs" document fills memory); duplicate keys (YAML
says they are an error; PyYAML silently keeps the last); nesting deeper than `MAX_DEPTH`. Config files, recipes,
constitutions and `--engine-arg` values all go through here.
"""

from __future__ import annotations

from typing import Any

import yaml

from cai.errors import UsageError

MAX_DEPTH = 64


class YAMLInputError(UsageError):
    """A YAML document cai will not read, with where and why."""


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLInputError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                 "accepted; write the value out")
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
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise YAMLInputError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first on "
                                         f"line {seen[key] + 1})")
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: PyYAML reports it below
                pass
        return super().construct_mapping(node, deep)


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
