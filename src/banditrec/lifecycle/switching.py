"""Switches: what is served changes at one learn-stream entry, on every replica alike.

A switch is appended to the learn stream like an action change (DESIGN principle 3), so
every replica applies it at the same place relative to the rewards:

- ``serve_mode`` (target ``own`` or ``apprentice``): serve banditrec's own choices, or the
  app's baseline (`banditrec.lifecycle.apprentice`);
- ``promote`` and ``rollback`` (target: a version id): serve that version from here on.

A version is a model file and the log offset its state includes. Served from entry S, it
is that model plus the learn events after its offset and before S, replayed: the same on
every replica, whether it applies S live or while recovering, exactly as a snapshot plus
the log tail is. What is served (the serving mode, the live and the previous version) is
the model's `lifecycle` metadata, so snapshots carry it and recovery restores it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from banditrec.lifecycle.apprentice import ServingMode
from banditrec.lifecycle.records import LifecycleRecords
from banditrec.snapshot import Model, ModelFileError, load_model
from banditrec.store import EventStore, LearnEvent, LearnKind

if TYPE_CHECKING:
    from banditrec.features import FeatureSchema

__all__ = ["SWITCHES", "LifecycleState", "SwitchError", "Switcher", "materialize"]

logger = logging.getLogger("banditrec.lifecycle")

#: The learn-stream entries that change what is served.
SWITCHES = (LearnKind.serve_mode, LearnKind.promote, LearnKind.rollback)


class SwitchError(ValueError):
    """A switch that cannot be made (an unknown version, a model file that does not load)."""


@dataclass(frozen=True)
class LifecycleState:
    """What is served, as of some log offset: kept in the model's metadata."""

    serving: Literal["own", "apprentice"] = "own"
    live_version: str | None = None
    previous_version: str | None = None

    @classmethod
    def of(cls, model: Model, apprentice_by_default: bool) -> LifecycleState:
        """The state a model records; a model that records none serves as configured."""
        data: Mapping[str, Any] = model.lifecycle
        default = "apprentice" if apprentice_by_default else "own"
        serving = data.get("serving", default)
        return cls(
            "apprentice" if serving == "apprentice" else "own",
            data.get("live_version"),
            data.get("previous_version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "live_version": self.live_version,
            "previous_version": self.previous_version,
        }

    def after(self, event: LearnEvent) -> LifecycleState:
        """The state after the switch `event`."""
        if event.kind is LearnKind.serve_mode:
            return replace(self, serving="apprentice" if event.event_id == "apprentice" else "own")
        if event.event_id == self.live_version:
            return self  # a repeated switch (two processes decided it at once): no change
        return replace(self, live_version=event.event_id, previous_version=self.live_version)


def materialize(
    version_id: str,
    until_seq: int,
    records: LifecycleRecords,
    store: EventStore,
    schema: FeatureSchema,
) -> Model:
    """The model of `version_id` as served from the learn event `until_seq` on: its model
    file plus the learn events after its offset and before `until_seq`.

    Raises
    ------
    SwitchError
        For a version the records do not have, or whose model file does not load.
    """
    from banditrec.engine import Engine  # the engine imports this module

    data = records.version_model(version_id)
    if data is None:
        raise SwitchError(f"No model version {version_id!r} is kept in the event store.")
    try:
        model = load_model(f"version {version_id}", schema, data)
    except ModelFileError as exc:
        raise SwitchError(str(exc)) from None
    # Without a store, the replaying engine skips switches inside the range: the version
    # serves itself throughout.
    replayer = Engine(model, np.random.default_rng(0))
    offset = model.log_offset
    while offset < until_seq - 1:
        events = [e for e in store.learn_events_after(offset) if e.seq < until_seq]
        if not events:
            break
        replayer.apply(events)
        offset = events[-1].seq
    return replayer.model


class Switcher:
    """The engine's hook for switch entries (`Engine.switcher`).

    Parameters
    ----------
    records, store, schema
        Where versions are kept, the log to replay, the schema models load under.
    apprentice
        How to serve in apprentice mode (exploration share, configured rule).
    apprentice_by_default
        Whether a model that records no serving mode starts as an apprentice (the setting).
    """

    def __init__(
        self,
        records: LifecycleRecords,
        store: EventStore,
        schema: FeatureSchema,
        apprentice: ServingMode,
        apprentice_by_default: bool = False,
    ) -> None:
        self.records = records
        self.store = store
        self.schema = schema
        self.apprentice = apprentice
        self.apprentice_by_default = apprentice_by_default

    def state(self, model: Model) -> LifecycleState:
        return LifecycleState.of(model, self.apprentice_by_default)

    def serving(self, model: Model) -> ServingMode | None:
        """How `model` serves: the apprentice mode, or None for its own choices."""
        return self.apprentice if self.state(model).serving == "apprentice" else None

    def apply(self, event: LearnEvent, model: Model) -> Model:
        """The model served after the switch `event` (`model` itself for a serving-mode
        change, with its state updated).

        A version that cannot be served (unknown, unreadable) is reported and skipped:
        every replica skips it alike, so they still agree.
        """
        state = self.state(model)
        new_state = state.after(event)
        if new_state == state:
            return model
        if event.kind is LearnKind.serve_mode or new_state.live_version == state.live_version:
            model.lifecycle = new_state.to_dict()
            return model
        try:
            served = materialize(event.event_id, event.seq, self.records, self.store, self.schema)
        except SwitchError as exc:
            logger.error("Cannot serve model version %s at seq %d: %s", event.event_id,
                         event.seq, exc)  # fmt: skip
            return model
        # Actions added at run time before the version was kept are not in its file (those
        # added after are in the replay); which actions are disabled is the operators' choice
        # of now, not the version's.
        for action in model.actions[len(served.actions) :]:
            served.policy.add_action()
            served.actions = (*served.actions, action)
        served.disabled = frozenset(model.disabled)
        served.version, served.created_at = model.version, model.created_at  # snapshots match
        served.log_id, served.lifecycle = model.log_id, new_state.to_dict()
        logger.info(
            "Serving model version %s from learn event %d (%s).",
            event.event_id, event.seq, event.kind.value,
        )  # fmt: skip
        return served
