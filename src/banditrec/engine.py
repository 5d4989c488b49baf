"""The one orchestrator: context ─► features ─► policy ─► probabilities ─► served action.

The API, the CLI and the simulator all decide through `Engine.decide`, so what is served,
what is logged and what is evaluated offline are the same thing (DESIGN principle 1).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec.exploration import sample_action
from banditrec.features import FeatureSchema
from banditrec.policies import Policy
from banditrec.snapshot import Model, new_version

__all__ = ["Decision", "Engine", "UnknownActionError"]


class UnknownActionError(ValueError):
    """A request named an action the schema does not know."""


@dataclass(frozen=True)
class Decision:
    """One served decision: everything needed to log it and to evaluate it later."""

    event_id: str
    action_index: int
    action: str
    probability: float
    probabilities: NDArray[np.float64]
    scores: NDArray[np.float64]
    means: NDArray[np.float64]
    x: NDArray[np.float64]
    model_version: str

    def score_by_action(self, actions: tuple[str, ...]) -> dict[str, float]:
        return {a: float(s) for a, s in zip(actions, self.scores, strict=True)}

    def probability_by_action(self, actions: tuple[str, ...]) -> dict[str, float]:
        return {a: float(p) for a, p in zip(actions, self.probabilities, strict=True)}


class Engine:
    """Decide and learn with one model, safely from several threads.

    Parameters
    ----------
    model
        The policy and the schema it runs under.
    rng
        The only source of randomness of the served decisions.

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

    def __init__(self, model: Model, rng: np.random.Generator) -> None:
        self.model = model
        self.rng = rng
        # Decisions read A⁻¹ and θ while learning writes them; numba kernels release no
        # Python-level atomicity, so one lock keeps every decision on a consistent model.
        self._lock = threading.Lock()
        self._all_eligible = np.ones(model.schema.n_actions, dtype=np.bool_)

    @classmethod
    def from_prior(
        cls, schema: FeatureSchema, rng: np.random.Generator, policy: Policy | None = None
    ) -> Engine:
        """An engine that knows nothing yet: every action at its prior."""
        from banditrec.policies import LinUCB

        policy = (policy or LinUCB()).reset(schema.n_actions, schema.n_features)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        model = Model(policy, schema, created_at=created, version=f"prior-{schema.hash[:8]}")
        return cls(model, rng)

    @property
    def schema(self) -> FeatureSchema:
        return self.model.schema

    @property
    def policy(self) -> Policy:
        return self.model.policy

    def eligible_mask(
        self, actions: Collection[str] | None = None, excluded: Collection[str] = ()
    ) -> NDArray[np.bool_]:
        """Boolean mask over the schema's actions; unknown names raise `UnknownActionError`."""
        if actions is None and not excluded:
            return self._all_eligible
        known = self.schema.actions
        for name in (*(actions or ()), *excluded):
            if name not in known:
                raise UnknownActionError(f"Unknown action {name!r}; known actions: {list(known)}.")
        allowed = set(known if actions is None else actions) - set(excluded)
        return np.array([a in allowed for a in known], dtype=np.bool_)

    def decide(
        self,
        context: Mapping[str, Any],
        eligible: NDArray[np.bool_] | None = None,
        event_id: str | None = None,
    ) -> Decision:
        """Choose an action for `context` (validated upstream) by sampling the distribution."""
        x = self.schema.vectorize(context)
        mask = self._all_eligible if eligible is None else eligible
        with self._lock:
            scores, probabilities = self.policy.distribution(x, mask)
            index = sample_action(probabilities, self.rng)
            version = self.model.version
        return Decision(
            event_id=event_id or uuid.uuid4().hex,
            action_index=index,
            action=self.schema.actions[index],
            probability=float(probabilities[index]),
            probabilities=probabilities,
            scores=scores.score,
            means=scores.mean,
            x=x,
            model_version=version,
        )

    def learn(self, x: NDArray[np.float64], action_index: int, reward: float) -> None:
        """Apply one learn event to the live model."""
        with self._lock:
            self.policy.update(x, action_index, reward)
            self.model.version = new_version(self.schema, self.model.n_updates)
