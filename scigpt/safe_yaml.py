"""The one YAML loader for every file a user hands SciGPT: run configs, sweep, transfer and
profile files, a run directory's ``config.yaml``.

``yaml.safe_load`` with YAML 1.2 floats, duplicate keys refused and bounded size, depth and alias
expansion: a hostile or broken file is refused in milliseconds with one line (``YAMLRefused``),
never a hang, a ``RecursionError`` or a silently kept duplicate. No project imports (a leaf).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

# Bounds on what a config may make the loader do. A config is a few hundred values; these stop
# hostile or broken files before they cost time, memory or the interpreter's stack: "billion
# laughs" (aliases of aliases expand exponentially in the interpolation that follows), anchors
# that refer to themselves, and nesting deeper than the recursive composer can follow.
MAX_YAML_BYTES = 4 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000  # scalars and collections, with every alias expanded


class YAMLRefused(ValueError):
    """A YAML text the config loader will not load (too large, too deep, aliases that expand
    too far or into themselves, a duplicate key); ``line`` is 1-based when known."""

    def __init__(self, problem: str, line: int | None = None):
        self.problem, self.line = problem, line
        super().__init__(f"line {line}: {problem}" if line else problem)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats like ``3e-4`` (YAML 1.1 reads a string) and
    refuses duplicate keys (YAML forbids them; PyYAML would silently keep the last)."""

    def compose_mapping_node(self, anchor):  # type: ignore[no-untyped-def]
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" then a key of base overrides it, as YAML intends
            ident, line = (key.tag, key.value), key.start_mark.line + 1
            if ident in seen:
                raise YAMLRefused(
                    f"duplicate key {key.value!r} (first at line {seen[ident]}): keep one", line
                )
            seen[ident] = line
        return node


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _check_bounds(text: str) -> None:
    """Walk the YAML event stream (PyYAML's parser keeps its own stack, no recursion) and
    refuse the text before anything is built: nesting deeper than ``MAX_YAML_DEPTH``, more than
    ``MAX_YAML_VALUES`` values once aliases are expanded, an alias inside its own anchor."""
    if len(text) > MAX_YAML_BYTES:
        raise YAMLRefused(
            f"the file is {len(text)} characters, more than a config may have "
            f"({MAX_YAML_BYTES}): is it the right file?"
        )
    open_: list[list[Any]] = []  # per open collection: [expanded values so far, its anchor]
    sizes: dict[str, int] = {}  # anchor -> expanded values of its node

    def add(n: int, line: int) -> None:
        if open_:
            open_[-1][0] += n
            if open_[-1][0] > MAX_YAML_VALUES:
                raise YAMLRefused(
                    f"the document expands to more than {MAX_YAML_VALUES} values through "
                    "aliases (*name): a config needs no such nesting of anchors; write the "
                    "values out or use fewer aliases",
                    line,
                )

    for ev in yaml.parse(text, Loader=_Loader):
        line = ev.start_mark.line + 1 if ev.start_mark else None
        if isinstance(ev, yaml.CollectionStartEvent):
            if len(open_) >= MAX_YAML_DEPTH:
                raise YAMLRefused(
                    f"nesting deeper than {MAX_YAML_DEPTH} levels: a config is a few levels "
                    "deep; check the brackets and indentation",
                    line,
                )
            open_.append([1, ev.anchor])
        elif isinstance(ev, yaml.CollectionEndEvent):
            n, anchor = open_.pop()
            if anchor is not None:
                sizes[anchor] = n
            add(n, line)
        elif isinstance(ev, yaml.ScalarEvent):
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            add(1, line)
        elif isinstance(ev, yaml.AliasEvent):
            if any(anchor == ev.anchor for _, anchor in open_):
                raise YAMLRefused(
                    f"alias *{ev.anchor} refers to its own anchor &{ev.anchor} (a value that "
                    "contains itself): replace the alias by the values it should repeat",
                    line,
                )
            add(sizes.get(ev.anchor, 1), line)  # an undefined alias: the composer says so


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 floats, duplicate keys refused and bounded size, depth
    and alias expansion (``YAMLRefused``); never constructs Python objects."""
    _check_bounds(text)
    return yaml.load(text, Loader=_Loader)


def load_yaml_file(path: Path, what: str) -> Any:
    """Read ``path`` with :func:`safe_load`; any problem is one ``ValueError`` line naming the
    file (``what`` says which kind: "sweep", "cluster profile" …) and the fix."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read {what} file {path}: {e.strerror}") from None
    try:
        return safe_load(text)
    except YAMLRefused as e:
        raise ValueError(f"{what} file {path} refused: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"{what} file {path}: YAML syntax error{where}: {problem}") from None
