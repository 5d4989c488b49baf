"""The lifecycle of one serving process: shadows scored as the log grows, and the switches.

`Lifecycle` follows the learn stream with a cursor of its own, behind the engine and off the
request path (a background task). For every learned round it scores the apprentice (own
choices against the baseline, from the logged distribution), every shadow candidate and the
previous version (each with its state before the round), then lets the shadows learn it.
Every `check_every` rounds, the process holding the snapshot lease checks the gates
(`banditrec.lifecycle.guardrail`) and appends the switch they call for; every process
applies it when it reaches that learn-stream entry (`banditrec.lifecycle.switching`).

A process's estimates start when it starts (its shadows start from their candidate's model
at the current offset); they are not persisted. Only the switches and versions are.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from banditrec.actions import ACTION_CHANGES
from banditrec.engine import Engine
from banditrec.lifecycle.apprentice import ServingMode, apprentice_round
from banditrec.lifecycle.errors import (
    CandidateExistsError,
    InvalidCandidateError,
    LifecycleNotFoundError,
    NotProvenError,
)
from banditrec.lifecycle.estimates import Estimate, Track
from banditrec.lifecycle.guardrail import Graduation, Guardrail, PromotionGate, interval_text
from banditrec.lifecycle.records import (
    CandidateSpec,
    LifecycleRecords,
    SwitchRecord,
    VersionInfo,
    records_for,
)
from banditrec.lifecycle.shadows import Shadow, candidate_model
from banditrec.lifecycle.switching import (
    SWITCHES,
    LifecycleState,
    Switcher,
    SwitchError,
    materialize,
)
from banditrec.policies import build_policy
from banditrec.snapshot import ModelFileError, load_model, model_bytes
from banditrec.store import EventStore, LearnEvent, LearnKind

if TYPE_CHECKING:
    from banditrec.config import Settings

__all__ = ["Lifecycle", "LifecycleCollector", "LifecycleSettings", "lifecycle_from_settings"]

logger = logging.getLogger("banditrec.lifecycle")


@dataclass(frozen=True)
class LifecycleSettings:
    """The knobs of the lifecycle (from `banditrec.config.Settings`)."""

    window: int = 5000
    check_every: int = 500
    n_bootstrap: int = 200
    alpha: float = 0.05
    min_effective_sample_size: float = 100.0
    apprentice: bool = False
    apprentice_explore: float = 0.1
    apprentice_hold_seconds: float = 600.0
    auto_graduate: bool = True
    auto_promote: bool = False
    promotion_margin: float = 0.0
    guardrail: bool = True
    guardrail_margin: float = 0.0
    seed: int = 0


class Lifecycle:
    """Shadows, estimates, gates and admin switches of one serving process.

    Build it with `Lifecycle.attach`, which also hooks the switcher into the engine.
    """

    def __init__(
        self,
        engine: Engine,
        store: EventStore,
        records: LifecycleRecords,
        settings: LifecycleSettings,
        may_switch: Callable[[], bool] = lambda: True,
    ) -> None:
        if engine.switcher is None:
            raise ValueError("Attach a switcher to the engine first (Lifecycle.attach).")
        self.engine, self.store, self.records = engine, store, records
        self.settings = settings
        self.may_switch = may_switch
        self.switcher: Switcher = engine.switcher
        self.cursor = engine.applied_offset
        self.state = self.switcher.state(engine.model)
        self.shadows: dict[str, Shadow] = {}
        self.previous: Shadow | None = None
        self.apprentice = Track(settings.window)
        self.graduation = Graduation(
            settings.apprentice_hold_seconds, settings.min_effective_sample_size
        )
        self.gate = PromotionGate(settings.promotion_margin, settings.min_effective_sample_size)
        self.guardrail = Guardrail(settings.guardrail_margin, settings.min_effective_sample_size)
        self._specs: dict[str, CandidateSpec] = {}
        self._pending = 0  # the seq of a switch this process appended and has not reached
        self._since_check = 0
        self._synced_at = float("-inf")
        self._estimates: dict[str, tuple[int, Estimate]] = {}
        self._work = threading.Lock()  # the shadows: the background step or an admin call
        self.sync_candidates()

    @classmethod
    def attach(
        cls,
        engine: Engine,
        store: EventStore,
        settings: LifecycleSettings,
        rule: Any = None,
        may_switch: Callable[[], bool] = lambda: True,
        records: LifecycleRecords | None = None,
    ) -> Lifecycle:
        """Hook a `Switcher` into `engine` and return the lifecycle following its log.

        `rule` is the configured baseline (a reset `FixedRule`), or None.
        """
        records = records or records_for(store)
        mode = ServingMode(settings.apprentice_explore, rule)
        engine.attach(Switcher(records, store, engine.schema, mode, settings.apprentice))
        return cls(engine, store, records, settings, may_switch)

    # -- following the log -------------------------------------------------------------

    def sync_candidates(self) -> None:
        """Start the shadows of new candidates (at the cursor); stop removed ones."""
        if self._specs and self.records.candidate_names() == set(self._specs):
            return  # nothing changed: no model file is read again
        specs = {spec.name: spec for spec in self.records.candidates()}
        with self._work:
            for name in set(self.shadows) - set(specs):
                del self.shadows[name]
            for name, spec in specs.items():
                if name in self.shadows:
                    continue
                try:
                    model = candidate_model(spec, self.engine.schema)
                except ValueError as exc:
                    if name not in self._specs:
                        logger.error("The candidate %r cannot run: %s", name, exc)
                    continue
                self.shadows[name] = Shadow(
                    name, model, self.cursor, self.engine.actions, self.settings.window
                )
            self._specs = specs

    async def run(self, interval: float = 0.05) -> None:
        """Forever: follow the log, check the gates. Cancel to stop."""
        failures = 0
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; the estimates wait
                failures += 1
                if failures == 1:
                    logger.exception("The lifecycle step failed; retrying.")
            else:
                failures = 0
            await asyncio.sleep(interval * (1 + min(failures, 100)))

    async def step(self, limit: int = 10_000) -> int:
        """Score and learn the learn events after the cursor; check the gates when due."""
        loop = asyncio.get_running_loop()
        if time.monotonic() - self._synced_at >= 1.0:
            self._synced_at = time.monotonic()
            await loop.run_in_executor(None, self.sync_candidates)
        events = await loop.run_in_executor(None, self.store.learn_events_after, self.cursor, limit)
        if events:
            await loop.run_in_executor(None, self.observe, events)
        if self._since_check >= self.settings.check_every:
            self._since_check = 0
            await self.check()
        return len(events)

    def observe(self, events: list[LearnEvent]) -> None:
        """Score and learn `events` (in order, after the cursor)."""
        with self._work:
            for event in events:
                if event.seq <= self.cursor:
                    continue
                if event.kind in SWITCHES:
                    self._switched(event)
                elif event.kind in ACTION_CHANGES or event.correction:
                    for shadow in self._all_shadows():
                        shadow.learn(event)
                else:
                    self._score(event)
                    for shadow in self._all_shadows():
                        shadow.learn(event)
                    self._since_check += 1
                self.cursor = event.seq

    def _all_shadows(self) -> list[Shadow]:
        previous = [] if self.previous is None else [self.previous]
        return [*self.shadows.values(), *previous]

    def _score(self, event: LearnEvent) -> None:
        propensity = event.propensity
        if propensity is None or self.state.serving == "apprentice":
            decision = self.store.get_decision(event.event_id)
            if decision is None:  # removed (retention, a privacy request): not scored
                return
            propensity = decision.probability
            seen = apprentice_round(
                decision.model_version, decision.probabilities, decision.action_index
            )
            if seen is not None:
                self.apprentice.add(event.reward, seen.propensity, seen.own, seen.baseline)
        for shadow in self._all_shadows():
            shadow.score(event, propensity)

    def _switched(self, event: LearnEvent) -> None:
        before, self.state = self.state, self.state.after(event)
        # What is served changed: every comparison with it starts again.
        for track in (self.apprentice, *(s.track for s in self.shadows.values())):
            track.clear()
        self.graduation.reset()
        self._estimates.clear()
        if self.state.live_version == before.live_version:
            return
        self.previous = None
        # After a promotion the guardrail follows the version served before. Not after a
        # rollback: the version left behind was judged worse, and following it would let
        # two versions take turns.
        previous = before.live_version or self._base_before(event.seq)
        if not self.settings.guardrail or previous is None or event.kind is LearnKind.rollback:
            return
        try:
            model = materialize(previous, event.seq, self.records, self.store, self.engine.schema)
        except SwitchError as exc:
            logger.error("The guardrail cannot follow version %s: %s", previous, exc)
            return
        self.previous = Shadow(
            f"previous:{previous}", model, event.seq, self.engine.actions, self.settings.window
        )

    def _base_before(self, seq: int) -> str | None:
        bases = [v for v in self.records.versions() if v.kind == "base" and v.log_offset < seq]
        return bases[-1].id if bases else None

    # -- the gates ---------------------------------------------------------------------

    def estimate(self, key: str) -> Estimate | None:
        """The estimate of ``apprentice``, ``previous`` or a candidate (cached per cursor)."""
        track = self._track(key)
        if track is None:
            return None
        cached = self._estimates.get(key)
        if cached is not None and cached[0] == track.n_total:
            return cached[1]
        s = self.settings
        estimate = track.estimate(s.n_bootstrap, s.alpha, s.seed)
        self._estimates[key] = (track.n_total, estimate)
        return estimate

    def _track(self, key: str) -> Track | None:
        if key == "apprentice":
            return self.apprentice
        if key == "previous":
            return None if self.previous is None else self.previous.track
        shadow = self.shadows.get(key)
        return None if shadow is None else shadow.track

    async def check(self) -> str | None:
        """Check the gates now; append the switch one calls for. Returns its reason."""
        if self._pending > self.cursor or not self.may_switch():
            return None
        # Far behind the engine (catching up after a start), the estimates describe the
        # past: no switch is decided on them.
        if self.engine.applied_offset - self.cursor > self.settings.check_every:
            return None
        s, now = self.settings, self.engine.clock()
        if self.state.serving == "apprentice" and s.auto_graduate:
            estimate = self.estimate("apprentice")
            reason = None if estimate is None else self.graduation.check(estimate, now)
            if reason is not None:
                await self.set_serving("own", reason)
                return reason
        if self.previous is not None:
            estimate = self.estimate("previous")
            version = self.previous.name.removeprefix("previous:")
            reason = None if estimate is None else self.guardrail.reason(estimate, version)
            if reason is not None:
                await self.rollback(version, reason)
                return reason
        if s.auto_promote:
            with self._work:
                names = list(self.shadows)
            passing = [
                (e.lift.value, name)
                for name in names
                if (e := self.estimate(name)) is not None and e.lift and self.gate.passes(e)
            ]
            if passing:
                _, name = max(passing)
                passed = self.estimate(name)
                assert passed is not None
                reason = (
                    f"promotion: {name} beats the live policy by {interval_text(passed)}, "
                    f"above the margin {s.promotion_margin:g}"
                )
                await self.promote(name, reason=reason)
                return reason
        return None

    # -- switches (admin and automatic) ------------------------------------------------

    async def _switch(self, kind: LearnKind, target: str, reason: str) -> SwitchRecord:
        seq = await self.engine.switch(kind, target)
        self._pending = max(self._pending, seq)
        record = SwitchRecord(seq, kind.value, target, self.engine.clock(), reason)
        await asyncio.get_running_loop().run_in_executor(None, self.records.record_switch, record)
        logger.warning("Switch at learn event %d: %s %s (%s).", seq, kind.value, target, reason)
        return record

    async def set_serving(
        self, mode: Literal["own", "apprentice"], reason: str = "admin"
    ) -> SwitchRecord:
        """Serve the own choices or the baseline from the next learn event on."""
        return await self._switch(LearnKind.serve_mode, mode, reason)

    def _ensure_base(self) -> None:
        # The model served before the first switch becomes a version, so that it can be
        # rolled back to (and followed by the guardrail).
        if self.switcher.state(self.engine.model).live_version is not None:
            return
        model = self.engine.snapshot_model()
        self.records.add_version(
            "base", model.version, model.log_offset, model.policy.name, model_bytes(model)
        )

    async def promote(self, name: str, force: bool = False, reason: str = "admin") -> SwitchRecord:
        """Serve candidate `name` (its current state) from the next learn event on.

        Raises
        ------
        LifecycleNotFoundError
            For an unknown candidate.
        NotProvenError
            When its lower bound does not beat the live policy by the margin (unless
            `force`).
        """
        shadow = self.shadows.get(name)
        if shadow is None:
            raise LifecycleNotFoundError(
                f"No candidate is named {name!r}; see GET /v1/admin/candidates."
            )
        estimate = self.estimate(name)
        if not force and (estimate is None or not self.gate.passes(estimate)):
            raise NotProvenError(self.gate.refusal(name, estimate or Estimate(0, None, None, None)))
        with self._work:
            self._ensure_base()
            data = shadow.model_file()
            live = self.switcher.state(self.engine.model).live_version
            version = self.records.add_version(
                "promotion", name, shadow.offset, shadow.engine.policy.name, data, parent=live
            )
            self.records.remove_candidate(name)
            self.shadows.pop(name, None)
            self._specs.pop(name, None)
        return await self._switch(LearnKind.promote, version.id, reason)

    async def rollback(self, version_id: str, reason: str = "admin") -> SwitchRecord:
        """Serve version `version_id` again from the next learn event on.

        When the guardrail follows that version (it was served before the last switch), its
        shadow's state is what is served (it kept learning); any other version is its model
        file plus the learn events since it was kept.

        Raises
        ------
        LifecycleNotFoundError
            For an unknown version.
        """
        known = {v.id: v for v in self.records.versions()}
        if version_id not in known:
            raise LifecycleNotFoundError(
                f"No model version is named {version_id!r}; see GET /v1/admin/models."
            )
        target = version_id
        with self._work:
            previous = self.previous
            if previous is not None and previous.name == f"previous:{version_id}":
                self._ensure_base()
                kept = self.records.add_version(
                    "rollback", f"{version_id} as followed in shadow", previous.offset,
                    previous.engine.policy.name, previous.model_file(), parent=version_id,
                )  # fmt: skip
                target = kept.id
            else:
                self._ensure_base()
        return await self._switch(LearnKind.rollback, target, reason)

    async def upload(
        self, data: bytes, label: str, activate: bool
    ) -> tuple[VersionInfo, SwitchRecord | None]:
        """Keep an uploaded model file as a version; serve it now if `activate`.

        It starts at the current end of the log (like a newly trained base model): the
        learn events before were, or could have been, in its training data.

        Raises
        ------
        ModelFileError
            For a file that does not load under the served schema.
        """
        model = load_model(f"upload {label}", self.engine.schema, data)
        if activate:
            with self._work:
                self._ensure_base()
        model.log_offset = self.store.last_offset()
        model.log_id, model.log_tip, model.lifecycle = None, None, {}
        version = self.records.add_version(
            "upload", label, model.log_offset, model.policy.name, model_bytes(model)
        )
        if not activate:
            return version, None
        return version, await self._switch(LearnKind.promote, version.id, f"upload: {label}")

    def add_candidate(self, spec: CandidateSpec) -> None:
        """Register a candidate (every process starts it in shadow within a second).

        Raises
        ------
        InvalidCandidateError, ModelFileError
            For a policy, parameters or model file that cannot run under the schema.
        CandidateExistsError
            For a name taken already.
        """
        try:  # fails here, not in every process later
            candidate_model(spec, self.engine.schema)
        except ModelFileError:
            raise
        except ValueError as exc:
            raise InvalidCandidateError(f"The candidate {spec.name!r} cannot run: {exc}") from None
        if not self.records.put_candidate(spec):
            raise CandidateExistsError(f"A candidate is named {spec.name!r} already.")
        self.sync_candidates()

    def remove_candidate(self, name: str) -> None:
        """Stop a candidate. Raises `LifecycleNotFoundError` for an unknown one."""
        if not self.records.remove_candidate(name):
            raise LifecycleNotFoundError(
                f"No candidate is named {name!r}; see GET /v1/admin/candidates."
            )
        self.sync_candidates()

    # -- reports -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What is served, every estimate with its interval, and the switches."""
        live = self.switcher.state(self.engine.model)
        apprentice = self.estimate("apprentice")
        previous = self.estimate("previous")
        return {
            "serving": live.serving,
            "live_version": live.live_version,
            "previous_version": live.previous_version,
            "evaluated_offset": self.cursor,
            "apprentice": {
                "explore": self.settings.apprentice_explore,
                "hold_seconds": self.settings.apprentice_hold_seconds,
                "lower_bound_above_zero_since": self.graduation.above_since,
                "estimate": None if apprentice is None else apprentice.to_dict(),
            },
            "guardrail": None
            if self.previous is None or previous is None
            else {"version": self.previous.name.removeprefix("previous:"), **previous.to_dict()},
            "candidates": self.candidates(),
            "switches": [r.to_dict() for r in self.records.switches()],
        }

    def candidates(self) -> list[dict[str, Any]]:
        out = []
        for name, spec in self._specs.items():
            shadow = self.shadows.get(name)
            estimate = self.estimate(name) if shadow is not None else None
            out.append(
                {
                    **spec.describe(),
                    "running": shadow is not None,
                    "started_at_offset": None if shadow is None else shadow.start,
                    "estimate": None if estimate is None else estimate.to_dict(),
                    "passes_gate": bool(estimate is not None and self.gate.passes(estimate)),
                }
            )
        return out

    def versions(self) -> list[dict[str, Any]]:
        live = self.switcher.state(self.engine.model).live_version
        return [{**v.to_dict(), "live": v.id == live} for v in self.records.versions()]

    def cached_estimates(self) -> dict[str, Estimate]:
        """The estimates as last computed, by ``apprentice``, ``previous`` or candidate."""
        return {key: estimate for key, (_, estimate) in list(self._estimates.items())}

    def state_now(self) -> LifecycleState:
        return self.switcher.state(self.engine.model)


def lifecycle_from_settings(
    engine: Engine,
    store: EventStore,
    settings: Settings,
    may_switch: Callable[[], bool] = lambda: True,
) -> Lifecycle:
    """The lifecycle a server runs, configured by `settings` (``BANDITREC_*``)."""
    rule = None
    if settings.baseline_rules is not None:
        schema = engine.schema
        rule = build_policy("fixed_rule", {"rules": settings.baseline_rules}, schema=schema)
        rule.reset(schema.n_actions, schema.n_features)
    lifecycle_settings = LifecycleSettings(
        window=settings.lifecycle_window,
        check_every=settings.lifecycle_check_every,
        min_effective_sample_size=settings.lifecycle_min_effective_sample_size,
        apprentice=settings.apprentice,
        apprentice_explore=settings.apprentice_explore,
        apprentice_hold_seconds=settings.apprentice_hold_seconds,
        auto_graduate=settings.auto_graduate,
        auto_promote=settings.auto_promote,
        promotion_margin=settings.promotion_margin,
        guardrail=settings.guardrail,
        guardrail_margin=settings.guardrail_margin,
        seed=settings.seed or 0,
    )
    return Lifecycle.attach(engine, store, lifecycle_settings, rule, may_switch)


class LifecycleCollector(Collector):
    """Prometheus gauges of the lifecycle: what is served, and each estimate's interval as
    last computed (a scrape never runs a bootstrap)."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def collect(self) -> Iterator[Metric]:
        lifecycle = self.lifecycle
        serving = GaugeMetricFamily(
            "banditrec_lifecycle_apprentice", "1 while the app's baseline is served."
        )
        serving.add_metric([], float(lifecycle.state_now().serving == "apprentice"))
        yield serving
        lift = GaugeMetricFamily(
            "banditrec_lifecycle_lift",
            "Estimated lift over the reference (the live policy; the baseline for the "
            "apprentice), with its interval.",
            labels=["policy", "bound"],
        )
        value = GaugeMetricFamily(
            "banditrec_lifecycle_value",
            "Estimated value (SNIPS) with its interval.",
            labels=["policy", "bound"],
        )
        for key, estimate in lifecycle.cached_estimates().items():
            for family, e in ((lift, estimate.lift), (value, estimate.value)):
                if e is None:
                    continue
                for bound, number in (("value", e.value), ("low", e.ci_low), ("high", e.ci_high)):
                    family.add_metric([key, bound], number)
        yield lift
        yield value
