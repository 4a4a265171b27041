"""Training recipes: a YAML file plus ``dotted.key=value`` overrides, read into typed dataclasses.

``llm2comp pretrain --config RECIPE.yaml train.max_steps=100 lr=1e-4`` reads RECIPE.yaml into the
command's schema (a dataclass whose fields may be dataclasses: the sections), applies the overrides,
checks every value against the type hints and calls each section's ``validate()``. Any problem is a
``ConfigError``: one line naming the file (or the override) and the full dotted key, so a typo
fails at once instead of hours into a run.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from data_prep.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A bad recipe or override, as one line naming the file or override and the dotted key; exit 2."""


def load_config(schema: type[T], path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (None: defaults only), apply ``overrides`` in order (later wins), type-check it
    all against ``schema`` and call every section's ``validate()``, innermost first."""
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    label = os.fspath(path) if path is not None else "<no recipe>"
    raw = _read_yaml(label) if path is not None else {}
    origins = apply_overrides(raw, overrides, getattr(schema, "ALIASES", {}))
    cfg = _Builder(label, origins).coerce(raw, schema, "")
    try:
        _validate(cfg)
    except ConfigError as e:  # validate() cannot know the file; prefix it, keeping the error's type
        e.args = (f"{label}{' with overrides' if overrides else ''}: {_one_line(e)}",)
        raise
    return cfg


def apply_overrides(raw: dict, overrides: Sequence[str], aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Set each ``key=value`` into ``raw`` in place (a key may be an alias of a dotted key).

    Returns {dotted key: override text} so that errors blame the override, not the file, for what
    it set. A value is YAML (``1e-4``, ``true``, ``[a,b]``, ``null``); an empty one is ``""``.
    """
    origins: dict[str, str] = {}
    aliases = aliases or {}
    for text in overrides:
        key, sep, value_text = text.partition("=")
        key = aliases.get(key.strip(), key.strip())
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {text}: expected dotted.key=value, e.g. train.max_steps=100")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else ""
        except yaml.YAMLError:  # not YAML (a glob like *.jsonl, a stray bracket): take the text as is
            value = value_text
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):  # setting into an absent (or null) section starts it
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        for stale in [k for k in origins if k.startswith(key + ".")]:  # replaced along with their section
            del origins[stale]
        origins[key] = text
    return origins


def config_to_dict(cfg: Any) -> dict:
    """The config as plain dicts, lists and scalars (tuples become lists), ready for ``yaml.safe_dump``."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        # Only init fields: the others are derived, and a recipe that named them would not load.
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.init}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return os.fspath(cfg) if isinstance(cfg, os.PathLike) else cfg


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``cfg`` as a YAML recipe that ``load_config`` reads back equal; atomically, so a crash
    never leaves half a file where a resumed run would look for it."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the recipe: {_one_line(getattr(e, 'strerror', None) or e)}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML: {_one_line(getattr(e, 'problem', None) or e)}") from None
    if data is None:  # an empty recipe: all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


class _Builder:
    """Turns the merged mapping into the schema's dataclasses, blaming the file or the override."""

    def __init__(self, label: str, origins: dict[str, str]):
        self.label, self.origins = label, origins

    def fail(self, key: str, problem: str, keyed: bool = True) -> ConfigError:
        # The override that set this key or a section around it, if any; else the file.
        ov = max((k for k in self.origins if key == k or key.startswith((k + ".", k + "["))), key=len, default=None)
        where = f"override {self.origins[ov]}" if ov is not None else self.label
        if keyed and key and not (ov is not None and self.origins[ov].startswith(key + "=")):
            where += f": {key}"  # unless the override text already spells the key out
        return ConfigError(f"{where}: {problem}")

    def build(self, cls: type, data: Any, key: str) -> Any:
        if not isinstance(data, dict):
            raise self.fail(key, f"expected a section (a mapping), got {_show(data)}")
        hints = get_type_hints(cls)  # resolves string annotations (from __future__ import annotations)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for name in data:
            if name not in fields:
                close = difflib.get_close_matches(str(name), list(fields), n=1)
                hint = f" (did you mean '{_join(key, close[0])}'?)" if close else ""
                raise self.fail(_join(key, name), f"unknown key '{_join(key, name)}'{hint}", keyed=False)
        kwargs = {}
        for name, f in fields.items():
            sub = _join(key, name)
            if name in data:
                kwargs[name] = self.coerce(data[name], hints[name], sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if not dataclasses.is_dataclass(hints[name]):
                    raise self.fail(sub, f"missing required key '{sub}'", keyed=False)
                kwargs[name] = self.build(hints[name], {}, sub)  # names the section's own missing keys
        return cls(**kwargs)

    def coerce(self, value: Any, tp: Any, key: str) -> Any:
        origin, args = get_origin(tp), get_args(tp)
        if origin in (Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            if len(options) == 1:  # Optional[X]: X's own, more precise, error
                return self.coerce(value, options[0], key)
            for option in options:
                try:
                    return self.coerce(value, option, key)
                except ConfigError:
                    pass
            raise self.fail(key, f"expected {_name(tp)}, got {_show(value)}")
        if origin is Literal:
            if any(value == a and type(value) is type(a) for a in args):  # True is not 1
                return value
            raise self.fail(key, f"expected one of {', '.join(map(repr, args))}, got {_show(value)}")
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key)
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
        elif tp in (int, bool, str):
            if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
                return value
        elif list in (tp, origin) or tuple in (tp, origin):
            if not isinstance(value, (list, tuple)):
                raise self.fail(key, f"expected a list, got {_show(value)}")
            if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[X, Y]: fixed length
                if len(value) != len(args):
                    raise self.fail(key, f"expected a list of {len(args)} items, got {len(value)}")
                item_types = args
            else:
                item_types = [args[0] if args else Any] * len(value)
            items = [self.coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types))]
            return tuple(items) if tuple in (tp, origin) else items
        elif dict in (tp, origin):
            if not isinstance(value, dict):
                raise self.fail(key, f"expected a mapping, got {_show(value)}")
            ktp, vtp = args or (Any, Any)
            return {self.coerce(k, ktp, _join(key, k)): self.coerce(v, vtp, _join(key, k)) for k, v in value.items()}
        else:  # Any, or a type this loader does not know: taken as is
            return value
        raise self.fail(key, f"expected {_name(tp)}, got {_show(value)}")


def describe(schema: type, prefix: str = "") -> list[str]:
    """Every key of a recipe schema with its type and default, one line each (``--help``)."""
    lines = []
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        key, tp = _join(prefix, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        if get_origin(tp) is Literal:
            kind = "|".join(map(str, get_args(tp)))
        else:
            kind = _name(tp)
        lines.append(f"  {key} = {default!r}   [{kind}]")
    return lines


def _validate(obj: Any) -> None:
    """Call ``validate()`` on every section, innermost first, so outer checks may rely on inner ones."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _validate(getattr(obj, f.name))
        if callable(getattr(obj, "validate", None)):
            obj.validate()
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _validate(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            _validate(v)


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def _name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _show(value: Any) -> str:
    text = repr(value)  # repr keeps a value on one line
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(problem: Any) -> str:
    return " ".join(str(problem).split())
