"""Fast model building for the forest: Orthanc's expanded JSON to models, without validation.

A listing page of 4,000 instances would spend most of its time in pydantic validation. The
:class:`_Factory` of each level reads the model's own field definitions and compiles them
into one straight-line function that builds an equal object; anything it does not expect
goes through ``from_orthanc``. :data:`_GC_PAUSE` keeps the cyclic garbage collector from
rescanning the growing forest during a build.
"""

from __future__ import annotations

import gc
import threading
import types
import typing
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic.functional_validators import BeforeValidator

from ..models import LEVELS, Resource, SharedFieldsSet

if TYPE_CHECKING:
    from ..server import Server

_MISSING: Any = object()
_REQUIRED: Any = object()


class _Unsupported(Exception):
    """A value the fast path does not handle: the model is built by pydantic instead."""


def _check_str(value: Any) -> Any:
    if type(value) is not str:
        raise _Unsupported
    return value


def _check_opt_str(value: Any) -> Any:
    if value is not None and type(value) is not str:
        raise _Unsupported
    return value


def _check_opt_int(value: Any) -> Any:
    if value is not None and type(value) is not int:
        raise _Unsupported
    return value


def _check_opt_bool(value: Any) -> Any:
    if value is not None and value is not True and value is not False:
        raise _Unsupported
    return value


def _check_str_tuple(value: Any) -> Any:
    if type(value) is not list and type(value) is not tuple:
        raise _Unsupported
    for item in value:
        if type(item) is not str:
            raise _Unsupported
    return tuple(value)


def _check_str_dict(value: Any) -> Any:
    if type(value) is not dict:
        raise _Unsupported
    for item in value.values():
        if type(item) is not str:
            raise _Unsupported
    return value  # kept, not copied: the listing's dict is not used elsewhere


def _check_dict(value: Any) -> Any:
    if type(value) is not dict:
        raise _Unsupported
    return value


def _check_choice(choices: frozenset[str]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is not None and (type(value) is not str or value not in choices):
            raise _Unsupported
        return value

    return check


_PLAIN_CHECKS: list[tuple[Any, Callable[[Any], Any]]] = [
    (str, _check_str),
    (str | None, _check_opt_str),
    (int | None, _check_opt_int),
    (bool | None, _check_opt_bool),
    (tuple[str, ...], _check_str_tuple),
    (dict[str, str], _check_str_dict),
    (dict[str, Any], _check_dict),
]


def _plain_check(annotation: Any) -> Callable[[Any], Any] | None:
    for known, check in _PLAIN_CHECKS:
        if annotation == known:
            return check
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if len(literals) == 1 and set(args) == {literals[0], type(None)}:
            values = typing.get_args(literals[0])
            if all(isinstance(v, str) for v in values):
                return _check_choice(frozenset(values))
    return None


_Build = Callable[[Any, "Server | None", "defaultdict[Any, dict[str, Any]]"], Resource]


def _ids(value: str) -> str:
    """The key under which a build's memos intern Orthanc IDs (never called)."""
    return value


class _FieldPlan(NamedTuple):
    name: str
    alias: str
    parse: Callable[[Any], Any] | None
    memoize: bool
    check: Callable[[Any], Any] | None
    default: Any
    factory: Callable[[], Any] | None


class _Factory:
    """Builds one model class from Orthanc's expanded JSON, like ``cls.from_orthanc``, faster.

    The plan is read from the model's own fields: the same aliases, the same ``BeforeValidator``
    parsers, the same defaults, so the objects equal what pydantic validation gives (a test
    checks it on odd values too). It is compiled into one straight-line function per class
    (as :mod:`dataclasses` does for ``__init__``), which takes a fifth less time than a loop
    over the fields. Parsed values are memoized per build (dates, names and numbers repeat a
    lot), which also lets equal values share one object. The models are built small: one
    fields set per level and combination of given fields, shared (copied by a model before a
    field is assigned), the ``__dict__`` a key-sharing dict, and each Orthanc ID one string
    for the resource, its parent's child list and its children's parent field. Anything
    unexpected (a non-string tag, a field type the plan does not know) goes through
    ``from_orthanc`` and its validation.
    """

    def __init__(self, cls: type[Resource]) -> None:
        self.cls = cls
        self.private = {
            name: attr.get_default() for name, attr in cls.__private_attributes__.items()
        }
        self.fields: tuple[_FieldPlan, ...] | None = self._plan(cls)
        #: one fields set per combination of given fields, shared by every model built so
        self.fields_sets: dict[int, SharedFieldsSet] = {}
        self._prime_shared_keys()
        self.build: _Build | None = self._compile() if self.fields is not None else None

    def _prime_shared_keys(self) -> None:
        """Let CPython's key-sharing dicts serve the models' ``__dict__``.

        Dicts of a class's instances share one key table when they are filled in the same
        order; the table is learnt from attribute assignments, so one throwaway object is
        filled that way first (a model's ``__dict__`` then takes about half the memory).
        """
        if self.fields is None:
            return
        obj = object.__new__(self.cls)
        for f in self.fields:
            object.__setattr__(obj, f.name, None)

    def _fields_set(self, mask: int) -> SharedFieldsSet:
        assert self.fields is not None
        given = SharedFieldsSet(f.name for k, f in enumerate(self.fields) if mask >> k & 1)
        return self.fields_sets.setdefault(mask, given)

    @staticmethod
    def _plan(cls: type[Resource]) -> tuple[_FieldPlan, ...] | None:
        plans: list[_FieldPlan] = []
        for name, info in cls.model_fields.items():
            if info.alias is None or not name.isidentifier():
                return None
            validators = [m for m in info.metadata if isinstance(m, BeforeValidator)]
            if len(info.metadata) != len(validators) or len(validators) > 1:
                return None
            parse = validators[0].func if validators else None
            check = None if parse is not None else _plain_check(info.annotation)
            if parse is None and check is None:
                return None
            if info.is_required():
                default, factory = None, _REQUIRED
            elif info.default_factory is not None:
                default, factory = None, info.default_factory
            else:
                default, factory = info.default, None
            memoize = parse is not None and info.annotation != (str | None)
            plans.append(
                _FieldPlan(name, info.alias, parse, memoize, check, default, factory)  # type: ignore[arg-type]
            )
        return tuple(plans)

    def _compile(self) -> _Build:
        """Write the plan out as one function: ``build(data, client, memos) -> model``.

        It raises :class:`_Unsupported` for anything the plan does not cover.
        """
        assert self.fields is not None
        names: dict[str, Any] = {
            "MISSING": _MISSING,
            "Unsupported": _Unsupported,
            "new": object.__new__,
            "setattr": object.__setattr__,
            "cls": self.cls,
            "private": self.private,
            "fields_sets": self.fields_sets,
            "fields_set": self._fields_set,
            "IDS": _ids,
            "map": map,
            "tuple": tuple,
        }
        cls = self.cls
        interned = {"id", cls.parent_field, cls.child_ids_field} - {None}
        lines = [
            "def build(data, client, memos):",
            "    if type(data) is not dict: raise Unsupported",
            "    get = data.get",
            "    tags = get('MainDicomTags')",
            "    if tags is None: tags = {}",
            "    elif type(tags) is not dict: raise Unsupported",
            "    tag = tags.get",
            "    ids = memos[IDS]",  # Orthanc IDs: one string object for the ID and its mentions
            "    setid = ids.setdefault",
            "    mask = 0",
        ]
        for k, f in enumerate(self.fields):
            names[f"parse{k}"] = f.parse
            names[f"check{k}"] = f.check
            names[f"default{k}"] = f.default
            names[f"factory{k}"] = f.factory
            if f.factory is _REQUIRED:
                missing = "raise Unsupported"
            elif f.factory is None:
                missing = f"v{k} = default{k}"
            else:
                missing = f"v{k} = factory{k}()"
            lines += [
                f"    v{k} = get({f.alias!r}, MISSING)",  # the listing's own keys come first
                f"    if v{k} is MISSING: v{k} = tag({f.alias!r}, MISSING)",
                f"    if v{k} is MISSING: {missing}",
                "    else:",
                f"        mask |= {1 << k}",
            ]
            if f.parse is None:
                lines.append(f"        v{k} = check{k}(v{k})")
                if f.name in interned:
                    if f.name == cls.child_ids_field:
                        lines.append(f"        v{k} = tuple(map(setid, v{k}, v{k}))")
                    else:
                        lines.append(f"        if v{k} is not None: v{k} = setid(v{k}, v{k})")
                continue
            lines += [
                f"        if type(v{k}) is str:",
                *(
                    [
                        f"            memo = memos[parse{k}]",
                        f"            parsed = memo.get(v{k}, MISSING)",
                        f"            if parsed is MISSING: parsed = memo[v{k}] = parse{k}(v{k})",
                        f"            v{k} = parsed",
                    ]
                    if f.memoize
                    else [f"            v{k} = parse{k}(v{k})"]
                ),
                f"        elif v{k} is not None: raise Unsupported",
            ]
        lines += [
            "    obj = new(cls)",
            "    values = obj.__dict__",  # a key-sharing dict, filled in the fields' order
            *(f"    values[{f.name!r}] = v{k}" for k, f in enumerate(self.fields)),
            "    given = fields_sets.get(mask)",
            "    if given is None: given = fields_set(mask)",
            "    setattr(obj, '__pydantic_fields_set__', given)",
            "    setattr(obj, '__pydantic_extra__', None)",
            "    links = private.copy()",
            "    links['_client'] = client",
            "    setattr(obj, '__pydantic_private__', links)",
            "    return obj",
        ]
        exec("\n".join(lines), names)  # the source comes from the model's own fields
        build: _Build = names["build"]
        return build

    def __call__(
        self, data: Any, client: Server | None, memos: defaultdict[Any, dict[str, Any]]
    ) -> Resource:
        """The model for one expanded JSON object (pydantic validation for odd input)."""
        if self.build is not None:
            try:
                return self.build(data, client, memos)
            except _Unsupported:
                pass
        return self.cls.from_orthanc(data, client)


_FACTORIES: dict[type[Resource], _Factory] = {cls: _Factory(cls) for cls in LEVELS}


def _new_memos() -> defaultdict[Any, dict[str, Any]]:
    return defaultdict(dict)


class _GcPause:
    """Pauses the automatic cyclic garbage collector while forests are built.

    A build allocates a hundred thousand containers that all stay alive. Left alone, the
    collector would scan the growing heap again and again (a third of the model-building
    time); switched off, it would scan the whole build at once when switched back on, after
    the last page. Instead, :meth:`settle` collects the young generations after each page,
    while the server works on the next one: each object is scanned once, early, and the
    build ends with little left to scan. Automatic collection resumes when the last
    concurrent build ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._was_enabled:
                gc.enable()

    @staticmethod
    def settle() -> None:
        """Scan what was allocated since the last call and move the survivors to the old
        generation (what the automatic collector would do, once per page)."""
        gc.collect(1)


_GC_PAUSE = _GcPause()
