"""Reading composed YAML nodes into Python values while keeping the line of every problem found."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

NULL_TAG = "tag:yaml.org,2002:null"
STR_TAG = "tag:yaml.org,2002:str"
CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a course folder, printed as `path:line: message`."""

    path: str
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def line_of(node: Node) -> int:
    """The 1-based line where `node` starts."""
    return node.start_mark.line + 1


def describe(node: Node) -> str:
    """What a node is, in words, for "expected X, got Y" messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == NULL_TAG:
        return "nothing"
    if not node.tag.startswith("tag:yaml.org,2002:"):
        return f"{node.tag} {node.value!r}"
    return repr(node.value) if node.tag == STR_TAG else node.value


def scalar_value(node: ScalarNode) -> object:
    """The Python value YAML gives a scalar (int, float, bool, None, str…); the raw text for unknown tags."""
    try:
        return yaml.SafeLoader("").construct_object(node)
    except yaml.YAMLError:
        return node.value


def compose_file(path: Path, shown: str) -> tuple[Node | None, list[Problem]]:
    """The root node of a YAML file, or None and the problem (unreadable file, syntax error, empty)."""
    try:
        source = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return None, [Problem(shown, line, "not valid UTF-8 text")]
    except OSError as exc:
        return None, [Problem(shown, 1, f"cannot read file: {exc.strerror}")]
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"YAML syntax error: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark:
            message += f" ({exc.context} from line {exc.context_mark.line + 1})"
        return None, [Problem(shown, mark.line + 1 if mark else 1, message)]
    except yaml.YAMLError as exc:
        return None, [Problem(shown, 1, f"YAML syntax error: {exc}")]
    if root is None:
        return None, [Problem(shown, 1, "the file is empty")]
    return root, []


@dataclass
class NodeReader:
    """Reads the nodes of one file and records a Problem for each node that is not what was expected."""

    path: str
    languages: tuple[str, ...] = ()  # the keys `texts()` expects
    problems: list[Problem] = field(default_factory=list)

    def report(self, node: Node, where: str, message: str) -> None:
        """Record a problem at `node`; `where` (e.g. "quiz[1].ask") prefixes the message when given."""
        self.problems.append(Problem(self.path, line_of(node), f"{where}: {message}" if where else message))

    def fields(
        self, node: Node, where: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Node] | None:
        """The values of a mapping by key; reports wrong type, unknown, duplicate and missing keys."""
        if not isinstance(node, MappingNode):
            self.report(node, where, f"expected a mapping, got {describe(node)}")
            return None
        allowed = tuple(allowed)
        found: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key not in allowed:
                shown = repr(key) if key is not None else describe(key_node)
                self.report(key_node, where, f"unknown key {shown} (allowed: {', '.join(allowed)})")
            elif key in found:
                self.report(key_node, where, f"duplicate key {key!r}")
            else:
                found[key] = value_node
        for key in required:
            if key not in found:
                self.report(node, where, f"missing required key {key!r}")
        return found

    def items(self, node: Node, where: str) -> list[Node] | None:
        """The entries of a list node; reports any other type."""
        if not isinstance(node, SequenceNode):
            self.report(node, where, f"expected a list, got {describe(node)}")
            return None
        return list(node.value)

    def text(self, node: Node, where: str) -> str | None:
        """A scalar's text exactly as written (so `NO` or `9:00` stay text); "" for an empty value."""
        if not isinstance(node, ScalarNode):
            self.report(node, where, f"expected text, got {describe(node)}")
            return None
        return "" if node.tag == NULL_TAG else node.value

    def text_items(self, node: Node, where: str) -> list[tuple[str, Node]] | None:
        """A list of texts, each with its node; None (reported) when `node` is not a list."""
        items = self.items(node, where)
        if items is None:
            return None
        result: list[tuple[str, Node]] = []
        for index, item in enumerate(items, start=1):
            value = self.text(item, f"{where}[{index}]")
            if value is not None:
                result.append((value, item))
        return result

    def choices(self, node: Node, where: str, allowed: Iterable[str], noun: str) -> tuple[str, ...] | None:
        """A list of names from `allowed` (lower-cased, without repeats); None when not a list."""
        entries = self.text_items(node, where)
        if entries is None:
            return None
        if not entries:
            self.report(node, where, f"no {noun}s listed")
        allowed = tuple(allowed)
        found: list[str] = []
        for text, item in entries:
            name = text.strip().lower()
            if name not in allowed:
                self.report(item, where, f"unknown {noun} {text!r} (allowed: {', '.join(allowed)})")
            elif name not in found:
                found.append(name)
        return tuple(found)

    def language_key(self, key_node: Node, where: str) -> str | None:
        """The language a mapping key names, or None (reported) when it is not one of `languages`."""
        language = key_node.value if isinstance(key_node, ScalarNode) else describe(key_node)
        if language in self.languages:
            return language
        self.report(key_node, where, f"unknown language {language!r} (allowed: {', '.join(self.languages)})")
        return None

    def texts(self, node: Node, where: str, every: bool = True) -> dict[str, str]:
        """A `{language: text}` mapping; with `every`, each of `languages` must be there and not blank."""
        if not isinstance(node, MappingNode):
            example = ", ".join(f"{language}: …" for language in self.languages)
            self.report(
                node,
                where,
                f"expected a mapping of language to text like {{{example}}}, got {describe(node)}",
            )
            return {}
        texts: dict[str, str] = {}
        for key_node, value_node in node.value:
            language = self.language_key(key_node, where)
            if language in texts:
                self.report(key_node, where, f"duplicate key {language!r}")
            elif language is not None:
                text = self.text(value_node, f"{where}.{language}")
                texts[language] = text or ""
                if text is not None and not text.strip():
                    self.report(value_node, f"{where}.{language}", "empty text")
        for language in self.languages if every else ():
            if language not in texts:
                self.report(node, where, f"missing language {language!r}")
        return texts

    def integer(self, node: Node, where: str, what: str) -> int | None:
        """A whole number (not `true`, not `"2"`); None (reported as "expected <what>") otherwise."""
        value = scalar_value(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.report(node, where, f"expected {what}, got {describe(node)}")
        return None

    def clock(self, node: Node, where: str) -> time | None:
        """A 24-hour `HH:MM` time, read from the text as written (YAML 1.1 reads 9:30 as the number 570)."""
        text = self.text(node, where)
        match = CLOCK.match(text.strip()) if text is not None else None
        if match is None:
            if text is not None:
                self.report(node, where, f'expected a 24-hour time like "09:00", got {text!r}')
            return None
        return time(int(match.group(1)), int(match.group(2)))
