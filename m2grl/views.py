"""The views of the multi-view graph: the item view plus the configured side views.

View names become Neo4j labels and relationship types, which Cypher cannot take as parameters,
so they are restricted to lower-case identifiers and turned into names here, in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ITEM_VIEW = "item"
VIEW_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


@dataclass(frozen=True)
class View:
    name: str

    def __post_init__(self) -> None:
        if not VIEW_NAME.match(self.name):
            raise ValueError(f"view name {self.name!r} must match {VIEW_NAME.pattern}")

    @property
    def is_item(self) -> bool:
        return self.name == ITEM_VIEW

    @property
    def label(self) -> str:
        """Node label of this view's values: ``category`` -> ``Category``, ``shop_id`` -> ``ShopId``."""
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def transition_type(self) -> str:
        """Relationship type of consecutive-in-session transitions: ``CATEGORY_NEXT``."""
        return f"{self.name.upper()}_NEXT"

    @property
    def membership_type(self) -> str:
        """Relationship type linking an item to its value in this side view: ``IN_CATEGORY``."""
        return f"IN_{self.name.upper()}"


@dataclass(frozen=True)
class ViewSet:
    """The item view first, then the side views in configured order."""

    side_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if ITEM_VIEW in self.side_names:
            raise ValueError("'item' is always a view; list only side views")
        if len(set(self.side_names)) != len(self.side_names):
            raise ValueError(f"side views are listed twice: {self.side_names}")
        for name in self.side_names:
            View(name)

    @property
    def item(self) -> View:
        return View(ITEM_VIEW)

    @property
    def side(self) -> tuple[View, ...]:
        return tuple(View(name) for name in self.side_names)

    @property
    def all(self) -> tuple[View, ...]:
        return (self.item, *self.side)

    def by_name(self, name: str) -> View:
        for view in self.all:
            if view.name == name:
                return view
        raise KeyError(name)
