"""Nested configuration dataclasses and the command lines built from them.

A configuration is a dataclass whose fields are settings or *sections* (fields whose type is
another dataclass, or a dict of overrides of one: ``field(metadata={"schema": Cls})``). A
setting has one dotted name (``effort.lora_r``, ``surrogate.train.epochs``) and its default in
one place: the dataclass that declares it.

- :func:`settings` lists the dotted names of a configuration class with their types;
- :func:`override` returns a copy with some dotted names replaced (a preset is such a dict);
- :func:`resolve` maps a flat name (an alias of the original scripts, or a setting whose last
  part is unique) to its dotted name(s);
- :func:`from_flat` builds a configuration from flat keyword arguments;
- :func:`build_parser` / :func:`parse` make an ``argparse`` command line: ``--<dotted name>``
  for every setting, plus every flat alias, with ``--preset`` applied first.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PRESET = "preset"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # an Alias without a const


@dataclass(frozen=True)
class Setting:
    """One leaf of a configuration: its dotted name, type, default and help text."""

    name: str
    type: Any
    default: Any
    help: str = ""


@dataclass(frozen=True)
class Alias:
    """A flat flag of an original script: it sets ``targets`` (one value to each), or with
    ``const`` is a switch that sets them to ``const``; ``ignored`` flags are accepted and only
    logged (``note`` says why)."""

    targets: tuple[str, ...] = ()
    const: Any = UNSET
    type: Callable[[str], Any] | None = None
    note: str = ""
    ignored: bool = False
    nargs: str | None = None  # e.g. "+" for the original's list flags, with ``reduce`` making the value
    reduce: Callable[[list], Any] | None = None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _schema(f: dataclasses.Field) -> type | None:
    return f.metadata.get("schema")


def settings(cls: type, prefix: str = "") -> dict[str, Setting]:
    """Every leaf setting of ``cls`` by dotted name (sections expanded)."""
    out: dict[str, Setting] = {}
    hints = _hints(cls)
    inst = cls() if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                        for f in dataclasses.fields(cls)) else None
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        tp = hints[f.name]
        if _schema(f) is not None:
            out.update(settings(_schema(f), name + "."))
        elif dataclasses.is_dataclass(tp):
            out.update(settings(tp, name + "."))
        elif f.metadata.get("cli", True):
            default = getattr(inst, f.name) if inst is not None else None
            out[name] = Setting(name, tp, default, f.metadata.get("help", ""))
    return out


def override(cfg: Any, values: Mapping[str, Any]) -> Any:
    """A copy of ``cfg`` with the dotted names of ``values`` replaced (sections copied, never shared)."""
    by_head: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for name, v in values.items():
        head, _, rest = name.partition(".")
        if rest:
            by_head.setdefault(head, {})[rest] = v
        else:
            direct[head] = v
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for head in [*by_head, *direct]:
        if head not in fields:
            raise ValueError(f"{type(cfg).__name__} has no setting {head!r}")
    changes = dict(direct)
    for head, sub in by_head.items():
        cur = getattr(cfg, head)
        if _schema(fields[head]) is not None:  # a dict of overrides of a schema's fields
            known = {f.name for f in dataclasses.fields(_schema(fields[head]))}
            bad = sorted(set(sub) - known)
            if bad:
                raise ValueError(f"{type(cfg).__name__}.{head} has no setting {bad}")
            changes[head] = {**cur, **sub}
        else:
            changes[head] = override(cur, sub)
    return dataclasses.replace(cfg, **changes)


def resolve(cls: type, name: str, aliases: Mapping[str, Alias] = types.MappingProxyType({})) -> tuple[str, ...]:
    """The dotted name(s) behind ``name``: an alias, a dotted name, or a unique last part."""
    if name in aliases:
        return aliases[name].targets
    known = settings(cls)
    if name in known:
        return (name,)
    hits = [k for k in known if k.rsplit(".", 1)[-1] == name]
    if len(hits) == 1:
        return (hits[0],)
    raise ValueError(f"{cls.__name__}: unknown setting {name!r}" + (f" (ambiguous: {hits})" if hits else ""))


def from_flat(cls: type, aliases: Mapping[str, Alias] = types.MappingProxyType({}), base: Any = None,
              **flat: Any) -> Any:
    """``cls`` (or ``base``) with flat or dotted names set, e.g. ``from_flat(PruneConfig, lamda=0.5)``."""
    values: dict[str, Any] = {}
    for name, v in flat.items():
        for target in resolve(cls, name, aliases):
            values[target] = v
    return override(base if base is not None else cls(), values)


def str2bool(v: str) -> bool:
    """``true/false``, ``yes/no``, ``1/0`` (as ``fire`` and the original scripts read them)."""
    if v.lower() in {"1", "true", "yes", "y"}:
        return True
    if v.lower() in {"0", "false", "no", "n"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def none_or(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda s: None if s.lower() in {"none", ""} else cast(s)


def finite_float(s: str) -> float:
    """A float option's value: NaN and infinity are refused (no setting of the pipeline means them,
    and a NaN weight or rate would run a whole stage before anything noticed)."""
    try:
        value = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {s!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
    return value


def _argparse_kwargs(tp: Any) -> dict[str, Any]:
    """argparse options for a field type (``X | None``, tuples and lists as ``nargs='+'``)."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else str
        args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list, Sequence):
        return {"nargs": "+", "type": str}  # items cast by _convert ("a b", "a,b" and "[a, b]" alike)
    if tp is bool:
        return {"nargs": "?", "const": True, "type": str2bool, "metavar": "BOOL"}
    cast = {int: int, float: finite_float, str: str}.get(tp, str)
    return {"type": none_or(cast) if optional else cast}


def _sequence_type(tp: Any) -> tuple[type | None, Any]:
    """(tuple or list, item type) of a sequence field type (``X | None`` unwrapped), else (None, None)."""
    for t in (tp, *typing.get_args(tp)):
        origin = typing.get_origin(t)
        if origin in (tuple, list, Sequence):
            items = [a for a in typing.get_args(t) if a is not Ellipsis]
            return (tuple if origin is not list else list), (items[0] if items else str)
    return None, None


def split_list(values: Sequence[str] | str, cast: Callable[[str], Any] = str) -> list[Any]:
    """``["a", "b"]``, ``["a,b"]`` or ``["[a, 'b']"]`` (the original scripts' list syntax) → items."""
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        out += [cast(x.strip().strip("'\"")) for x in v.strip().strip("[]").split(",") if x.strip().strip("'\"")]
    return out


def _convert(tp: Any, value: Any) -> Any:
    """A parsed value in the field's type (sequences split and cast)."""
    kind, item = _sequence_type(tp)
    if kind is None or not isinstance(value, (list, str)):
        return value
    items = split_list(value, {int: int, float: finite_float, str: str}.get(item, str))
    return tuple(items) if kind is tuple else items


def build_parser(cls: type, aliases: Mapping[str, Alias] = types.MappingProxyType({}),
                 presets: Mapping[str, Mapping[str, Any]] | None = None, base: Any = None,
                 hidden: Sequence[str] = (), **parser_kwargs: Any) -> argparse.ArgumentParser:
    """An ``argparse`` parser: ``--<dotted name>`` per setting (except the ``hidden`` ones, which
    the caller sets itself), the flat ``aliases``, and ``--preset`` when ``presets`` are given.
    Unset flags stay out of the namespace."""
    parser_kwargs.setdefault("usage", "%(prog)s [options]  (--help lists them)")
    p = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter, **parser_kwargs)
    base = base if base is not None else cls()
    known = {k: v for k, v in settings(cls).items() if k not in hidden}
    if presets:
        p.add_argument("--preset", choices=sorted(presets), default=argparse.SUPPRESS,
                       help="a named set of overrides, applied before the other options")
    flat_of: dict[str, list[str]] = {}
    for name, a in aliases.items():
        for t in a.targets:
            flat_of.setdefault(t, []).append(name)
    leaf_count: dict[str, int] = {}
    for k in known:
        leaf_count[k.rsplit(".", 1)[-1]] = leaf_count.get(k.rsplit(".", 1)[-1], 0) + 1
    for name, s in known.items():
        leaf = name.rsplit(".", 1)[-1]
        flags = [f"--{name}"]
        if leaf_count[leaf] == 1 and leaf != name and leaf not in aliases:
            flags.append(f"--{leaf}")
        flags += [f"--{a}" for a in flat_of.get(name, []) if len(aliases[a].targets) == 1 and aliases[a].nargs is None
                  and aliases[a].const is UNSET and aliases[a].type is None and f"--{a}" not in flags]
        default = _current(base, name, s.default)
        notes = [aliases[f[2:]].note for f in flags if f[2:] in aliases and aliases[f[2:]].note]
        text = "; ".join([*([s.help] if s.help else []), *notes])
        p.add_argument(*flags, dest=name, default=argparse.SUPPRESS, **_argparse_kwargs(s.type),
                       help=f"{text + ' ' if text else ''}(default: {default})")
    for a_name, a in aliases.items():
        if len(a.targets) == 1 and a.const is UNSET and a.type is None and a.nargs is None and not a.ignored:
            continue  # added beside its setting above
        kw: dict[str, Any] = {"dest": f"alias:{a_name}", "default": argparse.SUPPRESS,
                              "help": a.note or f"sets {', '.join(a.targets)}"}
        if a.const is not UNSET:
            kw["action"] = "store_const"
            kw["const"] = a.const
        elif a.type is not None or a.nargs is not None:
            kw.update({"type": a.type or str, **({"nargs": a.nargs} if a.nargs else {})})
        elif a.targets:
            kw.update(_argparse_kwargs(known[a.targets[0]].type))
        p.add_argument(f"--{a_name}", **kw)
    return p


def _current(cfg: Any, name: str, fallback: Any) -> Any:
    cur = cfg
    for part in name.split("."):
        if isinstance(cur, dict):
            return cur.get(part, fallback)
        cur = getattr(cur, part, fallback)
    return cur


def namespace_values(ns: argparse.Namespace, cls: type,
                     aliases: Mapping[str, Alias] = types.MappingProxyType({})) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dotted values, ignored flags) of a parsed namespace, in command-line order of kinds:
    aliases first, dotted names last (so ``--effort.seed`` beats ``--seed``)."""
    known = settings(cls)
    values: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, v in vars(ns).items():
        if key.startswith("alias:"):
            a = aliases[key[6:]]
            if a.ignored:
                ignored[key[6:]] = v
            if a.reduce is not None:
                v = a.reduce(v)
            for t in a.targets:
                values[t] = _converted(known[t].type, v, key[6:])
    for key, v in vars(ns).items():
        if key in known:
            values[key] = _converted(known[key].type, v, key)
    return values, ignored


def _converted(tp: Any, value: Any, flag: str) -> Any:
    try:
        return _convert(tp, value)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"argument --{flag}: invalid value {value!r} ({e})") from None


def parse(cls: type, argv: Sequence[str] | None = None, aliases: Mapping[str, Alias] = types.MappingProxyType({}),
          presets: Mapping[str, Mapping[str, Any]] | None = None, base: Any = None,
          parser: argparse.ArgumentParser | None = None) -> tuple[Any, argparse.Namespace, dict[str, Any]]:
    """(config, namespace, ignored flags) from ``argv``: ``base`` (or the defaults), then the
    preset, then the given options."""
    p = parser or build_parser(cls, aliases, presets, base)
    ns = p.parse_args(argv)
    cfg = base if base is not None else cls()
    preset = getattr(ns, PRESET, None)
    if preset:
        cfg = from_flat(cls, aliases, base=cfg, **presets[preset])
    try:
        values, ignored = namespace_values(ns, cls, aliases)
    except ValueError as e:  # a list or typed value that does not convert: one usage line, no traceback
        p.error(str(e))
    return override(cfg, values), ns, ignored


def get(cfg: Any, name: str) -> Any:
    """The value of a dotted setting. In a dict of overrides an unset key reads the section's
    ``config()`` (e.g. the surrogate's registered default) or else the schema's default."""
    parent, cur = None, cfg
    parts = name.split(".")
    for i, part in enumerate(parts):
        if isinstance(cur, dict):
            if part in cur:
                return cur[part]
            if hasattr(parent, "config"):
                return getattr(parent.config(), part)
            schema = _schema({f.name: f for f in dataclasses.fields(parent)}[parts[i - 1]])
            return getattr(schema(), part)
        parent, cur = cur, getattr(cur, part)
    return cur


def check_minimums(cfg: Any, minimums: Sequence[tuple[str, float]], flags: Mapping[str, str] | None = None) -> None:
    """Raise a ``ValueError`` naming the flag of the first setting of ``cfg`` below its minimum
    (``flags`` maps a field to its command-line name where they differ)."""
    for name, low in minimums:
        value = getattr(cfg, name)
        if value < low:
            raise ValueError(f"--{(flags or {}).get(name, name)} must be ≥ {low}, got {value}")


class FlatView:
    """Mixin: read a setting by its flat alias (``cfg.lamda`` = ``cfg.select.lamda``); the class
    names its alias table in ``_aliases`` (a callable returning it, to allow late definition)."""

    def __getattr__(self, name: str) -> Any:  # called only when normal lookup fails
        if name.startswith("_"):
            raise AttributeError(name)
        aliases = type(self)._aliases()
        if name in aliases and aliases[name].targets:
            return get(self, aliases[name].targets[0])
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
