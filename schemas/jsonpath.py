"""Simple JSON paths, for naming fields to redact: `params.arguments.password`,
`result.content[*].text`, `params.*.token`, `result.content[0].text`.

Dotted object keys; `*` is every key of an object, `[*]` every item of an array, `[N]` one
item. Keys containing `.`, `[` or `]` cannot be named; no filters, no recursive descent: paths
come from operators' config and must be obvious to read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Wildcard(Enum):
    ANY_KEY = "*"
    ANY_ITEM = "[*]"


Step = str | int | Wildcard
Replacer = Callable[[Any], tuple[Any, int]]

_SEGMENT = re.compile(r"^(?P<key>[^.\[\]]*)(?P<items>(?:\[(?:\*|\d+)\])*)$")
_ITEM = re.compile(r"\[(\*|\d+)\]")


@dataclass(frozen=True, slots=True)
class JsonPath:
    text: str
    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        """Raises ValueError naming the bad segment."""
        steps: list[Step] = []
        for segment in text.split("."):
            match = _SEGMENT.match(segment)
            if match is None or (not match["key"] and not match["items"]):
                raise ValueError(f"bad JSON path {text!r}: segment {segment!r} (want key, *, key[*] or key[N])")
            key = match["key"]
            if key:
                steps.append(Wildcard.ANY_KEY if key == "*" else key)
            for item in _ITEM.findall(match["items"]):
                steps.append(Wildcard.ANY_ITEM if item == "*" else int(item))
        return cls(text, tuple(steps))

    def replace(self, root: Any, replacer: Replacer) -> int:
        """Replace, in place, every value the path reaches with `replacer(value)[0]`; sum the counts."""
        return _replace(root, self.steps, 0, replacer)

    def __str__(self) -> str:
        return self.text


def _replace(node: Any, steps: tuple[Step, ...], i: int, replacer: Replacer) -> int:
    step = steps[i]
    targets: list[Any]
    if isinstance(step, Wildcard):
        if step is Wildcard.ANY_KEY:
            targets = list(node) if isinstance(node, dict) else []
        else:
            targets = list(range(len(node))) if isinstance(node, list) else []
    elif isinstance(step, str):
        targets = [step] if isinstance(node, dict) and step in node else []
    else:
        targets = [step] if isinstance(node, list) and step < len(node) else []
    count = 0
    last = i == len(steps) - 1
    for target in targets:
        if last:
            node[target], n = replacer(node[target])
            count += n
        else:
            count += _replace(node[target], steps, i + 1, replacer)
    return count
