"""The actions a model serves: their names, which are disabled, and the masks deciding uses.

Actions change at run time (added, disabled, enabled) through the learn stream, so every
replica changes them at the same place relative to the rewards (DESIGN principle 3). An
`ActionSet` is a value: a change makes a new one, and the engine swaps it in while it holds
its lock, so a decision always sees one consistent set.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from banditrec.store import LearnKind

__all__ = ["ACTION_CHANGES", "ActionExistsError", "ActionSet", "UnknownActionError"]

#: The learn-stream entries that change the action set rather than the model's statistics.
ACTION_CHANGES = (LearnKind.add_action, LearnKind.disable_action, LearnKind.enable_action)


class UnknownActionError(ValueError):
    """A request named an action the engine does not know."""


class ActionExistsError(ValueError):
    """An action to add exists already."""


@dataclass(frozen=True)
class ActionSet:
    """Every action known, in index order (the schema's, then those added at run time),
    and the disabled ones.

    Examples
    --------
    >>> actions = ActionSet(("a", "b", "c"), frozenset({"b"}))
    >>> actions.eligible_mask().tolist(), actions.eligible_mask(excluded=["a"]).tolist()
    ([True, False, True], [False, False, True])
    >>> actions.changed(LearnKind.add_action, "d").names
    ('a', 'b', 'c', 'd')
    """

    names: tuple[str, ...]
    disabled: frozenset[str] = frozenset()
    #: The mask of a request that names no actions: every enabled one.
    all_eligible: NDArray[np.bool_] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mask = np.array([a not in self.disabled for a in self.names], dtype=np.bool_)
        object.__setattr__(self, "all_eligible", mask)

    def eligible_mask(
        self, actions: Collection[str] | None = None, excluded: Collection[str] = ()
    ) -> NDArray[np.bool_]:
        """Mask over the actions: requested, not excluded, not disabled.

        Unknown names raise `UnknownActionError`; disabled ones are simply not served.
        """
        if actions is None and not excluded:
            return self.all_eligible
        known = self.names
        for name in (*(actions or ()), *excluded):
            if name not in known:
                raise UnknownActionError(f"Unknown action {name!r}; known actions: {list(known)}.")
        allowed = set(known if actions is None else actions) - set(excluded)
        return np.array([a in allowed for a in known], dtype=np.bool_) & self.all_eligible

    def names_of(self, mask: NDArray[np.bool_]) -> tuple[str, ...]:
        """The names `mask` selects (all of them for the unrestricted mask)."""
        if mask is self.all_eligible:
            return self.names
        return tuple(name for name, ok in zip(self.names, mask, strict=True) if ok)

    def check_change(self, kind: LearnKind, name: str) -> None:
        """Refuse a change a client asks for that cannot apply.

        Raises `ActionExistsError` for adding a known action and `UnknownActionError` for
        disabling or enabling an unknown one.
        """
        if kind is LearnKind.add_action and name in self.names:
            raise ActionExistsError(f"The action {name!r} exists already.")
        if kind is not LearnKind.add_action and name not in self.names:
            known = list(self.names)
            raise UnknownActionError(f"Unknown action {name!r}; known actions: {known}.")

    def changed(self, kind: LearnKind, name: str) -> ActionSet:
        """The set after the learn-stream entry (`kind`, `name`); `self` if it changes nothing.

        Idempotent by name: two workers adding the same action at once append two entries,
        and every replica applies the first and skips the second, so they still agree.
        """
        if kind is LearnKind.add_action:
            if name in self.names:
                return self
            return ActionSet((*self.names, name), self.disabled)
        if name not in self.names:
            return self
        if kind is LearnKind.disable_action:
            return ActionSet(self.names, self.disabled | {name})
        return ActionSet(self.names, self.disabled - {name})
