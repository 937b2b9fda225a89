"""The configuration reference, docs/configuration.md, rendered from the settings schema.

m2grl/settings.py is the one source: each field's type, constraints, default and description come
from there, so the page changes exactly when the settings do. tests/test_configuration_reference.py
fails when the page on disk differs from what this renders.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from m2grl.errors import M2grlError
from m2grl.settings import Settings, beside_checkout, default_cache_dir

REFERENCE_FILE = Path("docs/configuration.md")
REGENERATE_COMMAND = f"m2grl config reference --write {REFERENCE_FILE}"

# Defaults computed on the machine (folders under the home directory or beside the checkout) are
# shown as the rule that computes them, so the page reads the same everywhere.
CACHE_PLACEHOLDER = "<cache>"
CHECKOUT_PLACEHOLDER = "<checkout>"

_INTRO = f"""\
# Configuration reference

<!-- Generated from m2grl/settings.py by `{REGENERATE_COMMAND}`. Edit the descriptions there. -->

One settings object serves every component. Sources, strongest first: environment variables
`M2GRL_<SECTION>_<FIELD>`, then a TOML file with one table per section (`--config FILE`,
`$M2GRL_CONFIG`, or `./m2grl.toml` when present), then the defaults below. Unknown keys and invalid
values are rejected at start-up, naming the environment variable. `m2grl config show` prints the
effective values as TOML that can be saved and edited (secrets masked).

In an environment variable, lists and tables are JSON:
`M2GRL_VIEWS_SIDE='["category","brand"]'`, `M2GRL_VIEWS_STORES='{{"category": {{"database": "categories"}}}}'`.
Everything binds to loopback (`127.0.0.1`) unless a `host` setting says otherwise; secrets
(`neo4j.password`, `kafka.sasl_password`, `rpc.token`) are never printed.

In the defaults, `{CACHE_PLACEHOLDER}` is `$XDG_CACHE_HOME/m2grl`, or `~/.cache/m2grl` when
`XDG_CACHE_HOME` is unset, and `{CHECKOUT_PLACEHOLDER}` is the folder of this checkout (the one holding
pyproject.toml).
"""


def render_reference() -> str:
    """The whole page: an introduction, then per section a table of its fields."""
    sections = Settings.model_fields
    contents = " · ".join(f"[{name}](#{name})" for name in sections)
    parts = [_INTRO, f"Sections: {contents}\n"]
    for name, field in sections.items():
        parts.append(_render_section(name, _model_of(field)))
    return "\n".join(parts)


def _model_of(field: FieldInfo) -> type[BaseModel]:
    model = field.annotation
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise M2grlError(f"settings section of type {model!r} is not a model")
    return model


def _render_section(section: str, model: type[BaseModel]) -> str:
    lines = [f"## {section}", "", _doc(model), "", *_table(section, model), ""]
    for name, field in model.model_fields.items():
        entry = _entry_model(field)
        if entry is not None:
            lines += [f"### Entries of {section}.{name}", "", _doc(entry), "",
                      *_table(f"{section}.{name}.<name>", entry, with_env=False), ""]
    return "\n".join(lines)


def _doc(model: type[BaseModel]) -> str:
    if not model.__doc__:
        raise M2grlError(f"settings model {model.__name__} has no docstring to introduce it with")
    return inspect.cleandoc(model.__doc__)


def _table(prefix: str, model: type[BaseModel], *, with_env: bool = True) -> list[str]:
    header = ["field", "type", "default", *(["environment variable"] if with_env else []), "description"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, field in model.model_fields.items():
        if not field.description:
            raise M2grlError(f"setting {prefix}.{name} has no description; add description= to its Field")
        env = [f"`M2GRL_{prefix}_{name}`".upper()] if with_env else []
        cells = [f"`{name}`", _type_text(field), _default_text(prefix, name, field), *env, field.description]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return rows


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _entry_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a field that maps names to models (views.stores), else None."""
    if get_origin(field.annotation) is not dict:
        return None
    value = get_args(field.annotation)[1]
    return value if inspect.isclass(value) and issubclass(value, BaseModel) else None


def _type_text(field: FieldInfo) -> str:
    text = _annotation_text(field.annotation)
    limits = [_limit_text(item) for item in field.metadata]
    return ", ".join([text, *limits])


def _annotation_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):  # optional: "unset" is its default
        return " or ".join(_annotation_text(arg) for arg in args if arg is not NoneType)
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if origin is tuple:
        return f"list of {_annotation_text(args[0])}"
    if origin is dict:
        return f"table: name → {_annotation_text(args[1])}"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "entry (below)"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "secret"}
    if annotation not in names:
        raise M2grlError(f"no name for the settings type {annotation!r}; add one to the reference renderer")
    return names[annotation]


# Each kind of constraint: the attribute holding its bound, and how the page states it.
_LIMITS: tuple[tuple[type, str, str], ...] = (
    (Ge, "ge", "≥ {}"), (Gt, "gt", "> {}"), (Le, "le", "≤ {}"), (Lt, "lt", "< {}"),
    (MinLen, "min_length", "at least {} entries"), (MaxLen, "max_length", "at most {} entries"),
)


def _limit_text(item: object) -> str:
    """A constraint of a field, as the reader must respect it (an unknown kind fails: none is left out)."""
    for kind, bound, text in _LIMITS:
        if isinstance(item, kind):
            return text.format(getattr(item, bound))
    pattern = getattr(item, "pattern", None)
    if isinstance(pattern, str):
        return f"matching `{pattern}`"
    raise M2grlError(f"the reference renderer does not know the constraint {item!r}")


def _default_text(prefix: str, name: str, field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):  # a secret's default is never shown, whatever it is
        return "(secret)"
    if isinstance(value, Path):
        return f"`{_portable_path(prefix, name, value)}`"
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _portable_path(prefix: str, name: str, path: Path) -> str:
    if not path.is_absolute():
        return str(path)
    rules = ((default_cache_dir(), CACHE_PLACEHOLDER), (beside_checkout(), f"{CHECKOUT_PLACEHOLDER}/.."))
    for folder, placeholder in rules:
        if path.is_relative_to(folder):
            return str(Path(placeholder) / path.relative_to(folder))
    raise M2grlError(f"the default of {prefix}.{name}, {path}, depends on this machine; give the reference "
                     "renderer its rule")


def _reference(args: argparse.Namespace, settings: Settings) -> int:
    text = render_reference()
    if args.write is None:
        print(text, end="")
    else:
        args.write.write_text(text)
        print(f"wrote {args.write}")
    return 0


def register(config_actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reference = config_actions.add_parser(
        "reference", help="print the configuration reference (docs/configuration.md) as Markdown",
        description="Renders every setting's type, default, environment variable and description from the "
        f"settings schema. `{REGENERATE_COMMAND}` updates the page after a change of m2grl/settings.py.")
    reference.add_argument("--write", type=Path, metavar="FILE", help="write the page to FILE instead of printing it")
    reference.set_defaults(handler=_reference)
