"""NeMo Gym's configuration language over plain dicts: what its YAML files write beyond YAML.

``gateway.config`` owns the gateway's schema; this module owns the language, as NeMo Gym 0.7.0
(``nemo_gym/global_config.py``) and OmegaConf 2.3 (which Gym uses) define it:

* **merging** (OmegaConf's): mappings merge key by key, anything else is replaced, and a ``???``
  (mandatory, not filled in) does not replace a value that is there;
* **``config_paths``** (Gym's): a file pulls in other files, which merge *under* it, depth first,
  each file once; relative paths are looked up under ``NEMO_GYM_EXTRA_ROOTS``, the working
  directory, and then (where Gym looks in its install root) the folders above the including file;
* **directives** (Gym's, applied once the tree is merged): ``_inherit_from: path`` /
  ``${inherit_from:path}`` moves a block here, ``_copy: path`` / ``${copy:path}`` copies one, the
  block's own keys merged over it; ``_delete_key: a, b`` deletes keys of the block;
* **interpolation** (OmegaConf's grammar): ``${a.b}``, ``${a[0]}``, relative ``${.sibling}`` /
  ``${..uncle}``, nested ``${a.${b}}``, embedded ``http://${host}:${port}/v1``, ``\\${`` for a
  literal ``${``; resolvers ``oc.env`` (a default is returned as text, null as null),
  ``oc.select`` (a missing or ``???`` key gives the default, else null) and ``oc.decode``, with
  quoted, nested and typed (``null``, ``true``, ``8000``) arguments. Others (Hydra's ``hydra:``,
  ``now:``, ``oc.create``, ...) are refused, naming the key, when a value the gateway reads uses them.

One extension, the gateway's own: a plain ``${name}`` that is not in the tree falls back to the
environment (``name``, then ``NAME``). Resolution is lazy: only what the gateway reads is resolved,
so other servers' blocks of a larger Gym config may refer to things that are not set here.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import msgspec
import yaml

# OmegaConf's marker for "mandatory value, not filled in yet".
MISSING = "???"


class ConfigError(Exception):
    """The configuration cannot be used.

    The message names the offending key path (or file, for load errors) and
    never contains the value of ``api_key`` or other secrets. ``key`` holds the
    dotted key path when there is one, for callers that want it separately.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------
# Small tree helpers
# --------------------------------------------------------------------------


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def render(path: Sequence[str]) -> str:
    """A tree path as messages show it: ``a.b[0].c``."""
    out = ""
    for part in path:
        out = f"{out}[{part}]" if part.isdigit() and out else join(out, part)
    return out


def deep_merge(base: Any, other: Any) -> Any:
    """OmegaConf's merge: mappings key by key, anything else replaced; ``???`` replaces nothing."""
    if isinstance(base, dict) and isinstance(other, dict):
        merged = dict(base)
        for key, value in other.items():
            if key in merged:
                if value == MISSING:
                    continue
                merged[key] = deep_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    return copy.deepcopy(other)


def split_path(dotted: str) -> list[str]:
    # `a[0].b` and `a.0.b` both address list items, as in OmegaConf.
    return re.sub(r"\[(\d+)\]", r".\1", dotted).split(".")


def get_path(root: Any, parts: Sequence[str]) -> tuple[bool, Any]:
    node = root
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


# --------------------------------------------------------------------------
# YAML files and Gym's config_paths
# --------------------------------------------------------------------------


def load_yaml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    shown = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} {shown} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {shown} is a directory, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{what} {shown} cannot be read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {shown} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        # Report position and problem only: PyYAML's full message quotes the
        # offending line, which may well hold an API key.
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark is not None else shown
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{what} {where}: not valid YAML: {problem}") from None
    if data is None:  # an empty file (or only comments) is an empty mapping
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {shown}: the top level must be a mapping of keys, got {type_name(data)}")
    return data


CONFIG_PATHS_KEY = "config_paths"


def _include_roots(including: Path, environ: Mapping[str, str]) -> list[Path]:
    """Where a relative ``config_paths`` entry is looked for, first match wins: Gym's
    ``NEMO_GYM_EXTRA_ROOTS`` and working directory, then, for Gym's install root (which the
    gateway does not have), the folders above the including file, nearest first."""
    extra = [Path(d) for d in environ.get("NEMO_GYM_EXTRA_ROOTS", "").split(os.pathsep) if d]
    return [*extra, Path.cwd(), *including.resolve().parents]


def load_config_files(paths: Sequence[str | os.PathLike], environ: Mapping[str, str]) -> dict[str, Any]:
    """The given files and the files their ``config_paths`` pull in, merged as Gym merges them:
    every file after (so over) the files it pulled in, siblings in the order listed, each entry
    read once (the first file to name it pulls it in, files read breadth first)."""
    entries = [os.fspath(p) for p in dict.fromkeys(os.fspath(p) for p in paths)]
    roots = len(entries)
    files: list[Path] = [Path(e) for e in entries]
    datas: list[dict[str, Any]] = []
    children: list[list[int]] = [[] for _ in entries]
    chains: list[tuple[str, ...]] = [(e,) for e in entries]
    index = 0
    while index < len(entries):  # grows as files name others
        data = load_yaml(files[index], "config file")
        includes = data.get(CONFIG_PATHS_KEY) or []
        if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
            raise ConfigError(f"{files[index]}: {CONFIG_PATHS_KEY} must be a list of paths, got "
                              f"{type_name(includes)}", key=CONFIG_PATHS_KEY)
        for include in includes:
            if include in entries:
                continue
            entries.append(include)
            chains.append((*chains[index], include))
            files.append(_find_include(include, files[index], environ, chains[-1]))
            children.append([])
            children[index].append(len(entries) - 1)
        datas.append(data)
        index += 1

    merged: dict[str, Any] = {}

    def merge(i: int) -> None:  # depth first, children before the file that named them
        nonlocal merged
        for child in children[i]:
            merge(child)
        merged = deep_merge(merged, datas[i])

    for i in range(roots):
        merge(i)
    return merged


def _find_include(entry: str, including: Path, environ: Mapping[str, str], chain: tuple[str, ...]) -> Path:
    candidate = Path(entry)
    if candidate.is_absolute():
        looked = [candidate]
    else:
        looked = [root / candidate for root in _include_roots(including, environ)]
    for path in looked:
        if path.is_file():
            return path
    shown = "; ".join(str(p) for p in looked[:4]) + (", and the folders above" if len(looked) > 4 else "")
    raise ConfigError(f"{including}: {CONFIG_PATHS_KEY} entry {entry!r} was not found (included by "
                      f"{' -> '.join(chain)}; looked in {shown})", key=CONFIG_PATHS_KEY)


# --------------------------------------------------------------------------
# Gym's directives: _inherit_from, _copy, _delete_key
# --------------------------------------------------------------------------

INHERIT_KEY, COPY_KEY, DELETE_KEY = "_inherit_from", "_copy", "_delete_key"
_UNSET = object()  # a directive's source is ``???`` (or under one)


def apply_directives(root: dict[str, Any]) -> None:
    """Gym's pass over the merged tree, in place, in its order: depth first, a block's own
    ``_delete_key`` first, its children next, then its ``_inherit_from`` / ``_copy``, whose source
    is read from the tree as it was before the pass (so a copy keeps its interpolations, which
    then resolve where the copy lands). A source that is ``???`` makes the target ``???``."""
    _directives(root, (), root, copy.deepcopy(root))


def _directives(node: dict[str, Any], path: tuple[str, ...], root: dict[str, Any], frozen: dict[str, Any]) -> None:
    for key, value in list(node.items()):
        here = (*path, str(key))
        still_to_delete: set[str] = set()
        deletes = isinstance(value, dict) and DELETE_KEY in value
        if deletes:
            names = value.pop(DELETE_KEY)
            if not isinstance(names, str):
                where = render((*here, DELETE_KEY))
                raise ConfigError(f"{where}: expected a comma-separated string of keys, got {type_name(names)}",
                                  key=where)
            still_to_delete = {name.strip() for name in names.split(",")}
            for name in [n for n in still_to_delete if n in value]:
                del value[name]
                still_to_delete.discard(name)
        if isinstance(value, dict):
            _directives(value, here, root, frozen)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _directives(item, (*here, str(i)), root, frozen)

        moves, source, merge_own = _directive_of(value, here)
        if source is None:
            continue
        parts = source.split(".")
        container = _directive_source(root, parts[:-1], here, source)
        if moves and container is not _UNSET:
            if isinstance(container, dict):
                container.pop(parts[-1], None)  # several blocks may inherit from one: popped once
        found = _directive_source(frozen, parts, here, source)
        if container is _UNSET or found is _UNSET:
            node[key] = MISSING
            continue
        found = copy.deepcopy(found)
        node[key] = deep_merge(found, value) if merge_own else found
        for name in still_to_delete:  # what was not there before must be there now
            target = node[key]
            if not isinstance(target, dict) or name not in target:
                where = render((*here, DELETE_KEY))
                raise ConfigError(f"{where}: {name!r} is not a key of {render(here)}, even after {source} "
                                  "was merged in", key=where)
            del target[name]


def _directive_of(value: Any, here: tuple[str, ...]) -> tuple[bool, Optional[str], bool]:
    """(moves, source path, merge the block's own keys over it) of one value, or no source."""
    if isinstance(value, str):
        for name, moves in (("inherit_from", True), ("copy", False)):
            if value.startswith(f"${{{name}:"):
                return moves, value[len(name) + 3:].removesuffix("}").strip(), False
        return False, None, False
    if not isinstance(value, dict):
        return False, None, False
    if INHERIT_KEY in value and COPY_KEY in value:
        where = render(here)
        raise ConfigError(f"{where}: sets both {INHERIT_KEY} and {COPY_KEY}; a block comes from one place",
                          key=where)
    for name, moves in ((INHERIT_KEY, True), (COPY_KEY, False)):
        if name in value:
            source = value.pop(name)
            if not isinstance(source, str) or not source:
                where = render((*here, name))
                raise ConfigError(f"{where}: expected a dotted key path, got {type_name(source)}", key=where)
            return moves, source, True
    return False, None, False


def _directive_source(tree: Any, parts: Sequence[str], here: tuple[str, ...], source: str) -> Any:
    node = tree
    for part in parts:
        if node == MISSING:
            return _UNSET
        if not isinstance(node, dict) or part not in node:
            where = render(here)
            raise ConfigError(f"{where}: copies or inherits from {source}, which is not in the merged config",
                              key=where)
        node = node[part]
    return _UNSET if node == MISSING else node


# --------------------------------------------------------------------------
# Interpolation: OmegaConf's grammar
# --------------------------------------------------------------------------


class _Text(msgspec.Struct, frozen=True):
    text: str


class _Select(msgspec.Struct, frozen=True):  # ${key}: the key may itself hold interpolations
    key: tuple[Any, ...]
    src: str


class _Call(msgspec.Struct, frozen=True):  # ${resolver:arg,...}
    name: str
    args: tuple[Any, ...]
    src: str


class _Quoted(msgspec.Struct, frozen=True):  # 'text', "text": always a string
    parts: tuple[Any, ...]


class _Primitive(msgspec.Struct, frozen=True):  # an unquoted argument: typed when it is a lone literal
    parts: tuple[Any, ...]


class _ListArg(msgspec.Struct, frozen=True):
    items: tuple[Any, ...]


_Node = Union[_Text, _Select, _Call, _Quoted, _Primitive, _ListArg]

# A `${` together with the backslashes right before it, which decide whether it is escaped.
_INTERP_START_RE = re.compile(r"(\\*)\$\{")
_RESOLVER_RE = re.compile(r"\s*([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\s*:")
_INT_RE = re.compile(r"[-+]?(?:0|[1-9](?:_?[0-9])*)")
_FLOAT_RE = re.compile(r"[-+]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|inf|nan)", re.IGNORECASE)
_ARG_ESCAPES = set("\\,}]{[ ()'\":=$")


class _Pieces:
    """Literal text and interpolations, gathered as a string is read."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self._literal: list[str] = []

    def text(self, text: str) -> None:
        self._literal.append(text)

    def node(self, node: _Node) -> None:
        self._flush()
        self.parts.append(node)

    def done(self, keep_empty: bool = False) -> list[Any]:
        self._flush(keep_empty and not self.parts)
        return self.parts

    def _flush(self, keep_empty: bool = False) -> None:
        if self._literal or keep_empty:
            self.parts.append(_Text("".join(self._literal)))
            self._literal = []


class _Parser:
    """Recursive descent over one string value; errors name the key the string is at."""

    def __init__(self, text: str, key: str) -> None:
        self.text = text
        self.key = key
        self.i = 0

    def error(self, what: str) -> ConfigError:
        return ConfigError(f"{self.key}: {what} in {self.text!r}", key=self.key)

    # The whole value: literal text and interpolations; `\${` is a literal `${`, `\\${` a
    # backslash then an interpolation; backslashes elsewhere are left alone.
    def value(self) -> tuple[Any, ...]:
        parts: list[Any] = []
        literal: list[str] = []
        text = self.text
        while (m := _INTERP_START_RE.search(text, self.i)) is not None:
            literal.append(text[self.i: m.start()])
            backslashes = len(m.group(1))
            literal.append("\\" * (backslashes // 2))
            self.i = m.end()
            if backslashes % 2:
                literal.append("${")
                continue
            if "".join(literal):
                parts.append(_Text("".join(literal)))
            literal = []
            parts.append(self.interpolation(m.end() - 2))
        literal.append(text[self.i:])
        if "".join(literal) or not parts:
            parts.append(_Text("".join(literal)))
        return tuple(parts)

    def interpolation(self, start: int) -> _Node:
        """After ``${``: a resolver call or a key, up to its ``}``."""
        text = self.text
        m = _RESOLVER_RE.match(text, self.i)
        if m is not None:
            self.i = m.end()
            args = self.arguments()
            return _Call(m.group(1), args, text[start + 2: self.i - 1])
        pieces = _Pieces()
        while True:
            if self.i >= len(text):
                raise self.error("unterminated ${...} interpolation")
            if self.nested(pieces):
                continue
            char = text[self.i]
            self.i += 1
            if char == "}":
                break
            if char in "{'\"":
                raise self.error(f"unexpected {char!r} in a key")
            pieces.text(char)
        parts = pieces.done()
        if parts and isinstance(parts[0], _Text):
            parts[0] = _Text(parts[0].text.lstrip())
        if parts and isinstance(parts[-1], _Text):
            parts[-1] = _Text(parts[-1].text.rstrip())
        parts = [p for p in parts if not (isinstance(p, _Text) and not p.text)]
        if not parts:
            raise self.error("empty ${} interpolation")
        return _Select(tuple(parts), text[start + 2: self.i - 1].strip())

    def arguments(self) -> tuple[Any, ...]:
        self.skip_spaces()
        if self.peek() == "}":
            self.i += 1
            return ()
        args = []
        while True:
            args.append(self.element(",}"))
            char = self.peek()
            self.i += 1
            if char == "}":
                return tuple(args)
            if char != ",":
                raise self.error("unterminated ${...} interpolation" if char == "" else f"unexpected {char!r}")

    def element(self, stops: str) -> _Node:
        self.skip_spaces()
        char = self.peek()
        if char in ("'", '"'):
            quoted = self.quoted(char)
            self.skip_spaces()
            return quoted
        if char == "[":
            self.i += 1
            self.skip_spaces()
            items = []
            if self.peek() == "]":
                self.i += 1
            else:
                while True:
                    items.append(self.element(",]"))
                    char = self.peek()
                    self.i += 1
                    if char == "]":
                        break
                    if char != ",":
                        raise self.error("unterminated [...] argument" if char == "" else f"unexpected {char!r}")
            self.skip_spaces()
            return _ListArg(tuple(items))
        if char == "{":
            raise self.error("mapping arguments ({...}) to a resolver are not supported")
        pieces = _Pieces()
        text = self.text
        while self.i < len(text):
            char = text[self.i]
            if self.nested(pieces):
                continue
            if char == "\\" and self.i + 1 < len(text) and text[self.i + 1] in _ARG_ESCAPES:
                pieces.text(text[self.i + 1])
                self.i += 2
                continue
            if char in stops:
                break
            pieces.text(char)
            self.i += 1
        parts = pieces.done()
        if parts and isinstance(parts[-1], _Text):  # unescaped spaces around an argument do not count
            parts[-1] = _Text(parts[-1].text.rstrip())
        return _Primitive(tuple(p for p in parts if not (isinstance(p, _Text) and not p.text)))

    def quoted(self, quote: str) -> _Quoted:
        self.i += 1
        pieces = _Pieces()
        text = self.text
        while True:
            if self.i >= len(text):
                raise self.error("unterminated quoted string")
            char = text[self.i]
            if char == "\\" and text[self.i + 1: self.i + 2] in (quote, "\\"):
                pieces.text(text[self.i + 1])
                self.i += 2
            elif text.startswith("\\${", self.i):
                pieces.text("${")
                self.i += 3
            elif self.nested(pieces):
                continue
            elif char == quote:
                self.i += 1
                break
            else:
                pieces.text(char)
                self.i += 1
        return _Quoted(tuple(pieces.done(keep_empty=True)))

    def nested(self, pieces: _Pieces) -> bool:
        """An interpolation starts here: read it into ``pieces``."""
        if not self.text.startswith("${", self.i):
            return False
        self.i += 2
        pieces.node(self.interpolation(self.i - 2))
        return True

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t":
            self.i += 1


def _scalar(text: str) -> Any:
    """An unquoted resolver argument, typed as OmegaConf types it."""
    lowered = text.lower()
    if lowered == "null":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT_RE.fullmatch(text):
        return int(text.replace("_", ""))
    if _FLOAT_RE.fullmatch(text):
        return float(text) if "inf" not in lowered else math.copysign(math.inf, -1 if text[0] == "-" else 1)
    return text


# --------------------------------------------------------------------------
# Interpolation: resolving
# --------------------------------------------------------------------------

KNOWN_RESOLVERS = ("oc.env", "oc.select", "oc.decode", "copy", "inherit_from")


class Resolver:
    """Resolves ``${...}`` against the merged tree, then (plain keys only) the environment.

    Lazy: only the values the gateway reads are resolved, so unrelated parts of a larger NeMo Gym
    config may refer to things that are not set here. ``hint(name)`` says how to set a variable.
    """

    def __init__(self, root: dict[str, Any], environ: Mapping[str, str], hint: Callable[[str], str]) -> None:
        self._root = root
        self._environ = environ
        self._hint = hint
        self._cache: dict[tuple[str, ...], Any] = {}
        self._in_progress: list[tuple[str, ...]] = []  # paths being resolved, for cycle detection
        self._origin = ""  # the gateway key whose value started the current resolution

    def resolve(self, value: Any, key: str) -> Any:
        """Resolve ``value``, found at ``key`` (a dotted path of the tree), recursively."""
        self._origin = key
        return self._resolve(value, tuple(split_path(key)))

    def _resolve(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            if "${" not in value:
                return value
            parts = _Parser(value, render(path)).value()
            return self._concat(parts, path, typed=True)
        if isinstance(value, dict):
            return {k: self._resolve(v, (*path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v, (*path, str(i))) for i, v in enumerate(value)]
        return value

    def _concat(self, parts: tuple[Any, ...], path: tuple[str, ...], typed: bool) -> Any:
        """Text and interpolations: a lone interpolation keeps its value's type (``typed``);
        together they render as text, OmegaConf's way (``str()``: None, True)."""
        if typed and len(parts) == 1 and not isinstance(parts[0], _Text):
            return self._eval(parts[0], path)
        pieces = []
        for part in parts:
            value = self._eval(part, path)
            if isinstance(value, (dict, list)):
                key = render(path)
                src = getattr(part, "src", "")
                raise ConfigError(f"{key}: ${{{src}}} is a {type_name(value)} and cannot be embedded in a string",
                                  key=key)
            pieces.append(str(value))
        return "".join(pieces)

    def _eval(self, node: _Node, path: tuple[str, ...]) -> Any:
        if isinstance(node, _Text):
            return node.text
        if isinstance(node, _Select):
            return self._select(self._concat(node.key, path, typed=False), node.src, path)
        if isinstance(node, _Call):
            return self._call(node, path)
        if isinstance(node, _Quoted):
            return self._concat(node.parts, path, typed=False)
        if isinstance(node, _Primitive):
            if not node.parts:
                return ""
            if len(node.parts) == 1 and isinstance(node.parts[0], _Text):
                return _scalar(node.parts[0].text)
            return self._concat(node.parts, path, typed=True)
        return [self._eval(item, path) for item in node.items]

    def _target(self, key: str, path: tuple[str, ...], src: str) -> tuple[bool, tuple[str, ...]]:
        """(relative, the absolute path) of a key written at ``path``: ``.x`` is a sibling,
        each further dot one level up, as in OmegaConf."""
        dots = len(key) - len(key.lstrip("."))
        if not dots:
            return False, tuple(split_path(key))
        if dots > len(path) or not key[dots:]:
            where = render(path)
            raise ConfigError(f"{where}: ${{{src}}} goes above the top of the config", key=where)
        return True, (*path[: len(path) - dots], *split_path(key[dots:]))

    def _node(self, target: tuple[str, ...]) -> tuple[str, Any]:
        """``("set", the value resolved where it is)``, or ``("missing" | "absent", None)``:
        ``???``, or no such key."""
        found, raw = get_path(self._root, target)
        if not found or raw == MISSING:
            return ("missing" if found else "absent"), None
        if target in self._cache:
            return "set", copy.deepcopy(self._cache[target])
        if target in self._in_progress:
            chain = [self._origin, *map(render, self._in_progress[self._in_progress.index(target):]), render(target)]
            raise ConfigError(f"{self._origin}: interpolation cycle: {' -> '.join(chain)}", key=self._origin)
        self._in_progress.append(target)
        try:
            value = self._resolve(raw, target)
        finally:
            self._in_progress.pop()
        self._cache[target] = value
        return "set", copy.deepcopy(value)

    def _select(self, key: str, src: str, path: tuple[str, ...]) -> Any:
        relative, target = self._target(key, path, src)
        state, value = self._node(target)
        if state == "set":
            return value
        if not relative:
            # Not in the tree: the environment, as the exact name, then upper-cased
            # (policy_base_url -> POLICY_BASE_URL); its values are plain strings.
            for name in (key, key.upper()):
                if name in self._environ:
                    return self._environ[name]
        what = "which is set to ??? (a mandatory value never filled in)" if state == "missing" else "which is not set"
        hint = f": {self._hint(key)}" if not relative else ""
        raise self._missing(path, src, f"{what}{hint}")

    def _missing(self, path: tuple[str, ...], src: str, what: str) -> ConfigError:
        key = render(path)
        needed_by = f" (needed by {self._origin})" if key != self._origin else ""
        return ConfigError(f"{key} refers to ${{{src}}}, {what}{needed_by}", key=key)

    def _call(self, node: _Call, path: tuple[str, ...]) -> Any:
        key = render(path)
        name, args = node.name, node.args

        def arity(low: int, high: int) -> None:
            if not low <= len(args) <= high:
                wanted = str(low) if low == high else f"{low} or {high}"
                raise ConfigError(f"{key}: ${{{node.src}}}: {name} takes {wanted} argument(s), got {len(args)}",
                                  key=key)

        if name == "oc.env":
            arity(1, 2)
            var = self._eval(args[0], path)
            if not isinstance(var, str) or not var:
                raise ConfigError(f"{key}: ${{{node.src}}} needs a variable name", key=key)
            if var in self._environ:
                return self._environ[var]
            if len(args) == 2:  # evaluated only when needed
                default = self._eval(args[1], path)
                return None if default is None else str(default)
            raise self._missing(path, node.src, f"but the environment variable {var} is not set")
        if name == "oc.select":
            arity(1, 2)
            selected = self._eval(args[0], path)
            if not isinstance(selected, str) or not selected:
                raise ConfigError(f"{key}: ${{{node.src}}} needs a key", key=key)
            state, value = self._node(self._target(selected, path, node.src)[1])
            if state == "set":
                return value
            return self._eval(args[1], path) if len(args) == 2 else None
        if name == "oc.decode":
            arity(1, 1)
            text = self._eval(args[0], path)
            if text is None:
                return None
            if not isinstance(text, str):
                raise ConfigError(f"{key}: ${{{node.src}}}: oc.decode takes a string, got {type_name(text)}", key=key)
            parser = _Parser(text, key)
            element = parser.element("")
            if parser.i != len(text):
                raise parser.error("oc.decode: not one value")
            return self._eval(element, path)
        if name in ("copy", "inherit_from"):
            # Gym's directives, done before resolution when they are a whole value; anywhere else
            # OmegaConf gives their own text back, as Gym registers them.
            arity(1, 1)
            return f"${{{name}:{self._eval(args[0], path)}}}"
        raise ConfigError(f"{key}: the ${{{name}:...}} resolver is not supported (the gateway has "
                          f"{', '.join(KNOWN_RESOLVERS)})", key=key)
