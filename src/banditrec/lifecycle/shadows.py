"""Shadows: policies that learn from the live stream without serving, scored as they go.

A shadow is a candidate configuration (any registered policy and parameters), a trained
model file, or the version served before the last switch (the guardrail's reference). It
learns from exactly the learn events the live policy learns from, in the same order. Before
it learns a reward, its distribution on that round's context gives the probability it would
have served the logged action (progressive validation: scored with the state it had before
seeing the round), and the round enters its `Track` against the live policy, whose own
probability of the logged action is the logged propensity.

The context's eligible actions are not in the learn stream: a shadow is scored over every
action it serves (not disabled). Rounds whose decision excluded actions are therefore
scored as if nothing was excluded, a small bias when exclusions are rare.
"""

from __future__ import annotations

import zlib

import numpy as np

from banditrec.engine import Engine, prior_model
from banditrec.features import FeatureSchema
from banditrec.lifecycle.estimates import Track
from banditrec.lifecycle.records import CandidateSpec
from banditrec.policies import build_policy
from banditrec.snapshot import Model, load_model, model_bytes
from banditrec.store import LearnEvent

__all__ = ["Shadow", "candidate_model"]


def candidate_model(spec: CandidateSpec, schema: FeatureSchema) -> Model:
    """The model a candidate starts from: its model file, or its policy at the prior.

    Raises
    ------
    ValueError
        For an unknown policy or parameter (`build_policy`'s message).
    ModelFileError
        For a model file that does not load under `schema`.
    """
    if spec.model is not None:
        return load_model(f"candidate {spec.name}", schema, spec.model)
    if spec.policy is None:
        raise ValueError("A candidate needs a policy or a model file.")
    policy = build_policy(
        spec.policy,
        spec.params,
        exploration=spec.exploration,
        exploration_params=spec.exploration_params,
        schema=schema,
    )
    return prior_model(schema, policy)


class Shadow:
    """One policy in shadow from learn event `start` on.

    Parameters
    ----------
    name
        The candidate's name (or ``previous:<version>`` for the guardrail's reference).
    model
        Its model; its actions are brought up to `actions` (those added at run time).
    start
        The last learn event before it joined: it learns and is scored from the next one.
    actions
        The live model's actions at `start`.
    window
        Rounds kept for its estimates.
    """

    def __init__(
        self, name: str, model: Model, start: int, actions: tuple[str, ...], window: int
    ) -> None:
        self.name = name
        for action in actions[len(model.actions) :]:
            model.policy.add_action()
            model.actions = (*model.actions, action)
        model.log_offset = start
        self.start = start
        # A store-less engine: it applies action changes and learns, and ignores switches.
        # Its generator only breaks ties (and draws Thompson samples): seeded by the name,
        # so a shadow scores the same way in every run.
        self.engine = Engine(model, np.random.default_rng(zlib.crc32(name.encode())))
        self.track = Track(window)

    @property
    def offset(self) -> int:
        return self.engine.applied_offset

    def score(self, event: LearnEvent, propensity: float) -> None:
        """Score a reward round with the state before it, against the live policy."""
        engine = self.engine
        if event.action_index >= len(engine.actions):
            return  # an action this shadow does not know yet (cannot happen in order)
        mask = engine.eligible_mask()
        if not mask.any():
            return
        _, probabilities = engine.policy.distribution(event.x, mask, engine.rng)
        q = float(probabilities[event.action_index])
        self.track.add(event.reward, propensity, q, q_ref=propensity)

    def learn(self, event: LearnEvent) -> None:
        """Learn one entry of the stream (rewards, corrections, action changes)."""
        self.engine.apply([event])

    def model_file(self) -> bytes:
        """Its current model as a model file, at the offset it has learned up to."""
        return model_bytes(self.engine.snapshot_model())
