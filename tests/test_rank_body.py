"""The rank answer's order: most probable first, then the highest score, then the action's
position (the order `sorted` with that key gives), at any K, ties included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from banditrec.decisions import rank_body
from banditrec.store import DecisionRecord


def _record(probabilities: np.ndarray, scores: np.ndarray) -> DecisionRecord:
    k = len(probabilities)
    actions = tuple(f"a{i}" for i in range(k))
    best = int(np.argmax(probabilities))
    return DecisionRecord(
        event_id="e1", created_at=0.0, model_version="v1", context={}, x=np.zeros(2),
        actions=actions, eligible=actions, action_index=best,
        probability=float(probabilities[best]), probabilities=probabilities, scores=scores,
    )  # fmt: skip


# Few distinct values, so that ties (in probability, in score, in both) are common; signed
# zeros too, which compare equal.
_values = st.sampled_from([0.0, -0.0, 0.1, 0.25, 0.5, 1.0, -1.0, 2.5])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_values, _values), min_size=1, max_size=200))  # both sorts
def test_ranking_is_the_stable_sort_by_probability_then_score(
    pairs: list[tuple[float, float]],
) -> None:
    probabilities = np.array([abs(p) for p, _ in pairs])
    scores = np.array([s for _, s in pairs])
    body = rank_body(_record(probabilities, scores))
    p, s = probabilities.tolist(), scores.tolist()
    expected = sorted(range(len(pairs)), key=lambda k: (-p[k], -s[k]))
    assert [entry["action_id"] for entry in body["ranking"]] == [f"a{k}" for k in expected]
    for entry, k in zip(body["ranking"], expected, strict=True):
        assert entry["probability"] == p[k] and entry["score"] == s[k]
        assert type(entry["probability"]) is float and type(entry["score"]) is float
    assert body["action_id"] == f"a{int(np.argmax(probabilities))}"


def test_a_thousand_actions_keep_their_order_on_ties() -> None:
    rng = np.random.default_rng(0)
    probabilities = np.full(1000, 0.01 / 1000)
    probabilities[7] += 0.99
    scores = rng.choice([0.0, 1.0, 2.0], size=1000)  # many ties in score too
    ranking = rank_body(_record(probabilities, scores))["ranking"]
    assert ranking[0]["action_id"] == "a7"
    rest = [int(entry["action_id"][1:]) for entry in ranking[1:]]
    by_score = sorted((k for k in range(1000) if k != 7), key=lambda k: -scores[k])
    assert rest == by_score
