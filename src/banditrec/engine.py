"""The one orchestrator: decide → log → respond; reward → join → learn.

Every served decision is made by `Engine.decide`: the HTTP API calls `Engine.rank`, which
decides and logs, and the CLI's `banditrec traffic` drives that API over HTTP. Offline
evaluation (`banditrec evaluate`) samples its candidates' actions with the two calls `decide`
makes (`Policy.distribution`, then `exploration.sample_action`), so what is served, what is
logged and what is evaluated offline come from the same distribution (DESIGN principle 1).
The simulator does not decide: `AppSimulator.simulate_logged` draws the data of a uniform
random logging policy.

Serving adds the event log: `Engine.rank` logs every decision (group commit) before it
returns, `Engine.reward` joins a reward to its decision and learns it at once, and
`Engine.catch_up` applies the learn events other processes appended, in log order, so every
replica holds the same model (DESIGN principle 3).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from banditrec.actions import ACTION_CHANGES, ActionExistsError, ActionSet, UnknownActionError
from banditrec.caps import FrequencyRules, occurrence_rounds, with_serves
from banditrec.constraints import Constraints
from banditrec.exploration import NoEligibleActionError, sample_action, sample_actions
from banditrec.features import FeatureSchema
from banditrec.group_commit import GroupCommitLog
from banditrec.lifecycle.apprentice import ServingMode
from banditrec.lifecycle.switching import SWITCHES, Switcher
from banditrec.policies import LinUCB, Policy
from banditrec.policies.base import Explanation
from banditrec.snapshot import Model
from banditrec.store import (
    DecisionRecord,
    EventStore,
    LearnEvent,
    LearnKind,
    RewardOutcome,
    RewardResult,
    RewardRules,
    StoreUnavailableError,
    UserHistory,
)
from banditrec.store.decision_batch import DecisionBatch

__all__ = [
    "ActionExistsError",
    "Engine",
    "UnknownActionError",
    "new_event_id",
    "new_event_ids",
    "prior_model",
]

#: Decisions made for one capped user before giving up while other requests for the same
#: user keep changing its history (each attempt takes well under a millisecond).
_CAPPED_ATTEMPTS = 20

T = TypeVar("T")


class Engine:
    """Decide and learn with one model; log through `store` when serving.

    Parameters
    ----------
    model
        The policy and the schema it runs under; ``model.log_offset`` is the last learn event
        it includes.
    rng
        The only source of randomness of the served decisions.
    store
        The event log, or None to decide without logging (simulations, scripts).
    rules
        Reward window, default reward, aggregation and range.
    clock
        Wall-clock seconds; the reward windows are measured with it.

    Examples
    --------
    >>> import numpy as np
    >>> from banditrec.features import load_default_schema
    >>> engine = Engine.from_prior(load_default_schema(), rng=np.random.default_rng(0))
    >>> d = engine.decide({"country": "AT", "device": "ios", "segment": "high",
    ...     "n_sessions": 10, "days_since_install": 5, "recent_engagement": 12,
    ...     "avg_session_length": 180.0})
    >>> d.action in engine.schema.actions, 0 < d.probability <= 1
    (True, True)
    """

    def __init__(
        self,
        model: Model,
        rng: np.random.Generator,
        store: EventStore | None = None,
        rules: RewardRules | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.rng = rng
        self.store = store
        self.rules = rules or RewardRules()
        self.clock = clock
        self.applied_offset = model.log_offset
        #: Wall-clock time at which `applied_offset` was reached (replication lag, for ops).
        self.applied_at = time.time()
        self._version = f"{model.version}@{model.log_offset}"
        # Learning writes A⁻¹ and θ while deciding reads them. In the server both happen on
        # the event loop thread, but scripts may share an engine between threads.
        self._lock = threading.Lock()
        self._actions = ActionSet(model.actions, model.disabled)
        #: Switch entries (banditrec.lifecycle) are applied by it; None: they are ignored.
        self.switcher: Switcher | None = None
        #: The apprentice mode while the app's baseline is served; None: the own choices.
        self.serving: ServingMode | None = None
        #: Eligibility rules applied to every decision before its probabilities; None: none.
        self.constraints: Constraints | None = None
        #: Set by a `LogFollower` while it pushes the learn stream to this engine: a reward
        #: then waits for the follower to apply its learn event (``await wait_applied(seq)``)
        #: instead of reading the stream again itself, so each event is decoded once.
        self.wait_applied: Callable[[int], Awaitable[None]] | None = None
        self._log = (
            GroupCommitLog(store, self.rules, on_rewards=self._rewards_committed)
            if store is not None
            else None
        )

    @classmethod
    def from_prior(
        cls, schema: FeatureSchema, rng: np.random.Generator, policy: Policy | None = None
    ) -> Engine:
        """An engine that knows nothing yet: every action at its prior, no log."""
        return cls(prior_model(schema, policy), rng)

    @property
    def schema(self) -> FeatureSchema:
        return self.model.schema

    @property
    def policy(self) -> Policy:
        return self.model.policy

    @property
    def model_version(self) -> str:
        """The base model's version and the last learn event applied to it."""
        return self._version

    @property
    def actions(self) -> tuple[str, ...]:
        """Every action known (the schema's, then those added at run time)."""
        return self._actions.names

    @property
    def disabled(self) -> frozenset[str]:
        return self._actions.disabled

    # -- deciding ----------------------------------------------------------------------

    def eligible_mask(
        self, actions: Collection[str] | None = None, excluded: Collection[str] = ()
    ) -> NDArray[np.bool_]:
        """Mask over the actions: requested, not excluded, not disabled.

        Unknown names raise `UnknownActionError`; disabled ones are simply not served.
        """
        return self._actions.eligible_mask(actions, excluded)

    def decide(
        self,
        context: Mapping[str, Any],
        eligible: NDArray[np.bool_] | None = None,
        event_id: str | None = None,
        deferred: bool = False,
        user_id: str | None = None,
        baseline: str | None = None,
    ) -> DecisionRecord:
        """Choose an action for a validated `context` by sampling the policy's distribution
        (in apprentice mode: mostly the `baseline`, see `banditrec.lifecycle.apprentice`)."""
        x = self.schema.vectorize(context)
        with self._lock:
            actions = self._actions
            mask = actions.all_eligible if eligible is None else eligible
            if self.constraints is not None:  # masked before the probabilities are computed
                allowed = self.constraints.mask(x, len(actions.names))
                mask = self.constraints.restrict(allowed, mask, actions.names)
            scores, probabilities = self.policy.distribution(x, mask, self.rng)
            alpha = getattr(self.policy, "alpha", None)  # under the lock: this decision's
            version = self._version
            if self.serving is not None:  # apprentice: the app's baseline, mostly
                probabilities = self.serving.serve(probabilities, mask, baseline, x, actions.names)
                version = self.serving.mark(version)
            index = sample_action(probabilities, self.rng)
        return DecisionRecord(
            event_id=event_id or new_event_id(),
            created_at=self.clock(),
            model_version=version,
            context=dict(context),
            x=x,
            actions=actions.names,
            eligible=actions.names_of(mask),
            action_index=index,
            probability=float(probabilities[index]),
            probabilities=probabilities,
            scores=scores.score,
            deferred=deferred,
            user_id=user_id,
            alpha=None if alpha is None else float(alpha),
        )

    async def rank(
        self,
        context: Mapping[str, Any],
        eligible: NDArray[np.bool_] | None = None,
        event_id: str | None = None,
        deferred: bool = False,
        user_id: str | None = None,
        baseline: str | None = None,
    ) -> DecisionRecord:
        """Decide and durably log the decision before returning it.

        A repeated client `event_id` returns the decision logged the first time.
        """
        rules = self.constraints.frequency if self.constraints is not None else None
        if rules is not None and user_id is not None and self._log is not None:
            return await self._rank_capped(
                rules, context, eligible, event_id, deferred, user_id, baseline
            )
        record = self.decide(context, eligible, event_id, deferred, user_id, baseline=baseline)
        if self._log is None:
            return record
        return await self._log.log_decision(record)

    async def _rank_capped(
        self,
        rules: FrequencyRules,
        context: Mapping[str, Any],
        eligible: NDArray[np.bool_] | None,
        event_id: str | None,
        deferred: bool,
        user_id: str,
        baseline: str | None,
    ) -> DecisionRecord:
        """`rank` under per-user caps: read the user's history, mask what it caps, decide,
        and record the serve only if the history did not change meanwhile (another worker
        or replica served the user); else decide again from the new history. A retry does
        not bias the logged probability: whether the history moved does not depend on the
        action drawn."""
        store, log = self._require_log()
        for _ in range(_CAPPED_ATTEMPTS):
            now = self.clock()
            history = await log.call(store.user_history, user_id, now - rules.horizon)
            with self._lock:
                names = self._actions.names
                base = self._actions.all_eligible if eligible is None else eligible
            allowed = rules.mask(history, now, names)
            if len(base) != len(allowed):  # an action was added meanwhile: read again
                continue
            if base.any() and not (base & allowed).any():
                raise NoEligibleActionError(
                    f"Every action this request allows is capped or cooling down for user "
                    f"{user_id!r} (the configured caps and cooldowns)."
                )
            record = self.decide(context, base & allowed, event_id, deferred, user_id, baseline)
            claimed = await log.call(
                store.claim_serve, user_id, record.action, record.created_at, history.version,
                now - rules.horizon,
            )  # fmt: skip
            if claimed:
                return await log.log_decision(record)
        raise StoreUnavailableError(
            f"Decisions for user {user_id!r} kept changing the user's history while this one "
            f"was made ({_CAPPED_ATTEMPTS} attempts); retry."
        )

    async def rank_slate(
        self,
        context: Mapping[str, Any],
        k: int,
        eligible: NDArray[np.bool_] | None = None,
        event_id: str | None = None,
        deferred: bool = False,
        user_id: str | None = None,
    ) -> list[DecisionRecord]:
        """A slate of `k` distinct actions, slot by slot: each slot is a decision of its
        own (event id ``<event_id>:<slot>`` below the first), drawn from the policy's
        distribution over the actions not yet in the slate, and logged with that
        probability (its propensity given the slots above it). All `k` are logged in one
        group commit before returning.

        Raises
        ------
        NoEligibleActionError
            If fewer than `k` distinct actions can be served for this context.
        """
        base = event_id or new_event_id()
        mask = (self._actions.all_eligible if eligible is None else eligible).copy()
        records: list[DecisionRecord] = []
        for slot in range(k):
            slot_id = base if slot == 0 else f"{base}:{slot}"
            try:
                record = self.decide(context, mask, slot_id, deferred, user_id)
            except NoEligibleActionError:
                if slot == 0:
                    raise
                raise NoEligibleActionError(
                    f"The slate asks for {k} slots, but only {slot} distinct actions can be "
                    "served for this context."
                ) from None
            records.append(record)
            mask = mask.copy()
            mask[record.action_index] = False
        if self._log is None:
            return records
        return await self._log.log_decisions(records)

    def decide_batch(
        self,
        contexts: Sequence[Mapping[str, Any]],
        eligible: NDArray[np.bool_] | None = None,
        user_ids: Sequence[str | None] | None = None,
        baselines: Sequence[str | None] | None = None,
        *,
        columns: Mapping[str, Any] | None = None,
        masks: NDArray[np.bool_] | None = None,
    ) -> DecisionBatch:
        """`decide` for each of `contexts` (validated), scored in one call of the policy
        (`Policy.distribution_batch`), each with a new event id; one column per field.

        The served actions are drawn with ``rng.random(n)``: for a policy whose distribution
        draws nothing (LinUCB, the ridge policies), the same actions and probabilities as n
        calls of `decide` in a row with the same generator. `eligible` (one mask) holds for
        every context, `masks` (one row per context) for each one; `columns` are the
        contexts field by field, when the caller has them already.
        """
        n = len(contexts)
        if columns is None:
            columns = {f.name: [c[f.name] for c in contexts] for f in self.schema.fields}
        # The batch encoder, equal to `vectorize` row by row (one encoder).
        X = self.schema.vectorize_many(columns)
        with self._lock:
            actions = self._actions
            mask = actions.all_eligible if eligible is None else eligible
            rows = np.tile(mask, (n, 1)) if masks is None else masks & mask
            if self.constraints is not None:
                allowed = self.constraints.mask_batch(X, len(actions.names))
                for i in range(n):
                    rows[i] = self.constraints.restrict(allowed[i], rows[i], actions.names)
            scores, probabilities = self.policy.distribution_batch(X, rows, self.rng)
            version = self._version
            if self.serving is not None:  # apprentice: the app's baselines, mostly
                for i in range(n):
                    baseline = None if baselines is None else baselines[i]
                    probabilities[i] = self.serving.serve(
                        probabilities[i], rows[i], baseline, X[i], actions.names
                    )
                version = self.serving.mark(version)
            chosen = sample_actions(probabilities, self.rng)
        # What each decision could serve: the request's mask, or each row's own.
        per_row = masks is not None or self.constraints is not None
        served = [actions.names_of(m) for m in rows] if per_row else [actions.names_of(mask)] * n
        return DecisionBatch(
            event_ids=new_event_ids(n),
            created_at=self.clock(),
            model_version=version,
            contexts=[c if type(c) is dict else dict(c) for c in contexts],
            X=X,
            actions=actions.names,
            eligible=served,
            action_index=chosen,
            probability=probabilities[np.arange(n), chosen],
            probabilities=probabilities,
            scores=scores.score,
            user_ids=user_ids,
        )

    async def rank_batch(
        self,
        contexts: Sequence[Mapping[str, Any]],
        eligible: NDArray[np.bool_] | None = None,
        user_ids: Sequence[str | None] | None = None,
        baselines: Sequence[str | None] | None = None,
        *,
        columns: Mapping[str, Any] | None = None,
    ) -> DecisionBatch:
        """`decide_batch`, then log every decision in one transaction before returning (on
        the writer thread, between the group commits of single decisions)."""
        batch = self.decide_batch(contexts, eligible, user_ids, baselines, columns=columns)
        if self.store is None or self._log is None:
            return batch
        await self._log.call(self.store.log_decision_batch, batch, self.rules)
        return batch

    async def rank_batch_capped(
        self,
        rules: FrequencyRules,
        contexts: Sequence[Mapping[str, Any]],
        user_ids: Sequence[str | None],
        eligible: NDArray[np.bool_] | None = None,
        baselines: Sequence[str | None] | None = None,
        *,
        columns: Mapping[str, Any] | None = None,
    ) -> list[DecisionRecord]:
        """`rank_batch` under per-user caps and cooldowns: each decision masked by its
        user's history, as `rank` masks it, then logged in one group commit.

        The users' histories are read at once; a user's second decision in the batch is
        masked by what the first served (`banditrec.caps.occurrence_rounds`). Every serve is
        claimed at the version of the history it was decided from; a user whose history
        moved meanwhile (a request in another worker or replica) has the decisions from the
        refused claim on made again from the new history, as `rank` does.

        Raises
        ------
        NoEligibleActionError
            If a decision's user is capped or cooling down on every action it allows
            (raised before anything is claimed, unless the history moved under a retry).
        """
        store, log = self._require_log()
        if columns is None:
            columns = {f.name: [c[f.name] for c in contexts] for f in self.schema.fields}
        done: list[DecisionRecord | None] = [None] * len(contexts)
        todo = list(range(len(contexts)))
        for _ in range(_CAPPED_ATTEMPTS):
            now = self.clock()
            since = now - rules.horizon
            users = list(dict.fromkeys(u for i in todo if (u := user_ids[i]) is not None))
            histories = await log.call(_read_histories, store, users, since)
            with self._lock:
                names = self._actions.names
                base = self._actions.all_eligible if eligible is None else eligible
            if len(base) != len(names):  # an action was added meanwhile: read again
                continue
            made: dict[int, DecisionRecord] = {}
            served: dict[str, list[tuple[str, float]]] = {u: [] for u in users}
            for rows in occurrence_rounds(user_ids, todo):
                masks = np.ones((len(rows), len(names)), dtype=bool)
                for j, i in enumerate(rows):
                    user = user_ids[i]
                    if user is None:
                        continue
                    masks[j] = rules.mask(with_serves(histories[user], served[user]), now, names)
                    if base.any() and not (base & masks[j]).any():
                        raise NoEligibleActionError(
                            f"Every action this request allows is capped or cooling down for "
                            f"user {user!r} (contexts.{i}; the configured caps and cooldowns)."
                        )
                batch = self.decide_batch(
                    [contexts[i] for i in rows], eligible, [user_ids[i] for i in rows],
                    None if baselines is None else [baselines[i] for i in rows],
                    columns={name: [v[i] for i in rows] for name, v in columns.items()},
                    masks=masks,
                )  # fmt: skip
                for i, record in zip(rows, batch.records(), strict=True):
                    made[i] = record
                    if record.user_id is not None:
                        served[record.user_id].append((record.action, record.created_at))
            claims = [(u, histories[u].version, served[u]) for u in users]
            refused = await log.call(_claim_serves, store, claims, since)
            todo_next, nth = [], dict.fromkeys(users, 0)
            for i in todo:
                user = user_ids[i]
                if user is not None:
                    nth[user] += 1
                    if nth[user] > refused.get(user, nth[user]):  # from the refused claim on
                        todo_next.append(i)
                        continue
                done[i] = made[i]
            todo = todo_next
            if not todo:
                return await log.log_decisions([r for r in done if r is not None])
        raise StoreUnavailableError(
            f"Decisions for the batch's users kept changing their histories while it was "
            f"made ({_CAPPED_ATTEMPTS} attempts); retry."
        )

    # -- rewards and learning ----------------------------------------------------------

    async def reward(self, event_id: str, value: float) -> RewardResult:
        """Join a reward to its decision and learn it at once in this process."""
        store, log = self._require_log()
        # Committed with the other rewards of its group; the group's learn events are
        # applied before any of them returns: read at once (`catch_up`), or by the follower.
        now = self.clock()
        result = await log.record_reward(event_id, value, now)
        if self.wait_applied is not None:  # the follower applies it (read-your-writes)
            if result.seq is not None:
                await self.wait_applied(result.seq)
            elif result.outcome in (RewardOutcome.learned, RewardOutcome.summed):
                self.catch_up()  # the store did not say which event: read it
        rules = self.constraints.frequency if self.constraints is not None else None
        if (
            rules is not None
            and rules.watches_negatives
            and result.outcome is RewardOutcome.learned
            and value <= rules.negative_at_most
        ):  # a cooldown after a negative reward starts now, for the decision's user
            decision = await log.call(store.get_decision, event_id)
            if decision is not None and decision.user_id is not None:
                await log.call(
                    store.record_negative, decision.user_id, decision.action, now,
                    now - rules.horizon,
                )  # fmt: skip
        return result

    async def user_history(self, user_id: str, since: float) -> UserHistory:
        """The user's serves and negative rewards since `since` (caps, explanations)."""
        store, log = self._require_log()
        return await log.call(store.user_history, user_id, since)

    async def activate(self, event_id: str) -> bool | None:
        """Activate a deferred decision: True now, False if it already was, None if unknown."""
        store, log = self._require_log()
        return await log.call(store.activate, event_id, self.clock(), self.rules)

    async def apply_default_rewards(
        self, limit: int = 1000, now: float | None = None
    ) -> dict[str, int]:
        """Learn the default reward of at most `limit` decisions whose window closed before
        `now` (default: the clock) without a reward, those that closed first.

        Returns the number of decisions defaulted, by action. The write goes through this
        process's writer thread like decisions do, so a batch delays the decisions waiting
        behind it by its own duration: keep `limit` to a few thousand.
        """
        store, log = self._require_log()
        now = self.clock() if now is None else now
        by_action = await log.call(store.apply_default_rewards, now, self.rules, limit)
        if by_action:
            self.catch_up()
        return by_action

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the store write ``fn(*args)`` on this process's writer thread, between two
        group commits (retention, privacy requests): decisions wait for it as they wait for
        a default-reward batch, so keep each call short."""
        _, log = self._require_log()
        return await log.call(fn, *args)

    def _rewards_committed(self) -> None:
        # After each group of rewards: read their learn events now, unless a follower is
        # pushed them (then each reward waits for its own event in `reward`).
        if self.wait_applied is None:
            self.catch_up()

    def catch_up(self) -> int:
        """Apply the learn events appended since the last one applied; return how many."""
        if self.store is None:
            return 0
        applied = 0
        while events := self.store.learn_events_after(self.applied_offset):
            applied += self.apply(events)
        return applied

    def apply(self, events: Sequence[LearnEvent]) -> int:
        """Apply learn events in order, skipping those already applied."""
        n = 0
        with self._lock:
            for event in events:
                if event.seq <= self.applied_offset:
                    continue
                if event.kind in ACTION_CHANGES:
                    self._apply_action_change(event.kind, event.event_id)
                elif event.kind in SWITCHES:
                    self._apply_switch(event)
                elif event.correction:
                    self.policy.correct(event.x, event.action_index, event.reward)
                elif event.propensity is not None and (
                    logged := getattr(self.policy, "update_logged", None)
                ):  # auto scores its members with the probability the action was served with
                    x, action = event.x, event.action_index
                    logged(x, action, event.reward, event.weight, event.propensity)
                else:
                    self.policy.update(event.x, event.action_index, event.reward, event.weight)
                self.applied_offset = event.seq
                n += 1
            if n:
                self.applied_at = time.time()
            self.model.log_offset = self.applied_offset
            self._version = f"{self.model.version}@{self.applied_offset}"
        return n

    def _apply_action_change(self, kind: LearnKind, name: str) -> None:
        changed = self._actions.changed(kind, name)
        if changed is self._actions:
            return
        if len(changed.names) > len(self._actions.names):
            self.policy.add_action()
        self._actions = changed
        self.model.actions, self.model.disabled = changed.names, changed.disabled

    def _apply_switch(self, event: LearnEvent) -> None:
        if self.switcher is None:  # a script's engine, or a replay: the version serves on
            return
        model = self.switcher.apply(event, self.model)
        if model is not self.model:
            self.model = model
            self._actions = ActionSet(model.actions, model.disabled)
        self.serving = self.switcher.serving(model)

    def attach(self, switcher: Switcher) -> None:
        """Apply switch entries with `switcher` from now on, serving as the model records."""
        with self._lock:
            self.switcher = switcher
            self.serving = switcher.serving(self.model)

    async def switch(self, kind: LearnKind, target: str) -> int:
        """Append a switch entry (`banditrec.lifecycle.switching`) and apply it; its seq."""
        store, log = self._require_log()
        seq: int = await log.call(store.append_action_change, kind, target, self.clock())
        self.catch_up()
        return seq

    async def change_action(self, kind: LearnKind, name: str) -> None:
        """Add, disable or enable an action, through the log so that every replica does it.

        Raises `UnknownActionError` for disabling or enabling an unknown action and
        `ActionExistsError` for adding a known one.
        """
        store, log = self._require_log()
        self._actions.check_change(kind, name)
        await log.call(store.append_action_change, kind, name, self.clock())
        self.catch_up()

    def explain(self, x: NDArray[np.float64]) -> tuple[Explanation, str]:
        """The policy's explanation of the vector `x` and the model version it explains,
        read together under the model's lock (a learn event may be applied meanwhile)."""
        with self._lock:
            return self.policy.explain(x), self._version

    def snapshot_model(self) -> Model:
        """A consistent copy of the live model (for saving while serving goes on)."""
        with self._lock:
            policy = type(self.policy)(
                **self.policy.get_params(), exploration=self.policy.exploration
            )
            policy.set_state(self.policy.get_state())
            return Model(
                policy,
                self.schema,
                self.model.created_at,
                self.model.version,
                self.applied_offset,
                self._actions.names,
                self._actions.disabled,
                log_id=self.model.log_id,
                lifecycle=dict(self.model.lifecycle),
            )

    def _require_log(self) -> tuple[EventStore, GroupCommitLog]:
        if self.store is None or self._log is None:
            raise RuntimeError("This engine has no event log; rewards need one.")
        return self.store, self._log

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def prior_model(schema: FeatureSchema, policy: Policy | None = None) -> Model:
    """A model that knows nothing: `policy` (default LinUCB) reset for `schema`."""
    policy = (policy or LinUCB()).reset(schema.n_actions, schema.n_features)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return Model(policy, schema, created_at=created, version=f"prior-{schema.hash[:8]}")


def _read_histories(
    store: EventStore, users: Sequence[str], since: float
) -> dict[str, UserHistory]:
    return {user: store.user_history(user, since) for user in users}


def _claim_serves(
    store: EventStore, claims: Sequence[tuple[str, int, Sequence[tuple[str, float]]]], since: float
) -> dict[str, int]:
    """Claim each user's serves in order, the n-th at the version read plus n (each claim
    moves it by one); for each user with a refused claim, how many were claimed before."""
    refused: dict[str, int] = {}
    for user, version, serves in claims:
        for n, (action, at) in enumerate(serves):
            if not store.claim_serve(user, action, at, version + n, since):
                refused[user] = n
                break
    return refused


def new_event_ids(n: int) -> list[str]:
    """`n` new event ids at once, each a UUID version 7 in hex as `new_event_id` makes.

    One clock read and one draw of random bytes for all: the ids of one batch share their
    millisecond and differ in their 74 random bits (as unguessable as single ids), and are
    returned sorted, so a batch's rows land in order at the end of the log's unique index.
    The bits are set and the hex written for the whole batch at once (numpy), not id by id.

    >>> ids = new_event_ids(3)
    >>> len(set(ids)), {len(i) for i in ids}, {i[12] for i in ids}, ids == sorted(ids)
    (3, {32}, {'7'}, True)
    """
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, :6] = np.frombuffer((time.time_ns() // 1_000_000).to_bytes(6, "big"), np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70  # version 7
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 9562 variant
    # Sorted as 16-byte strings (byte by byte: the order of their hex), in C.
    text = np.sort(raw.view("S16").ravel()).tobytes().hex()
    return [text[i : i + 32] for i in range(0, 32 * n, 32)]


def new_event_id() -> str:
    """A new decision's event id: a UUID version 7 in hex, 32 characters.

    Random (74 bits) and time-ordered (its first 48 bits are the Unix time in milliseconds):
    consecutive decisions land at the end of the event log's unique index, where uuid4's
    random ids each dirtied a random page of it, which doubled the cost of logging.

    >>> a, b = new_event_id(), new_event_id()
    >>> len(a), a[12], a != b, a[:8] <= b[:8]
    (32, '7', True, True)
    """
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
    return raw.hex()
