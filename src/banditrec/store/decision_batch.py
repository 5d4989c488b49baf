"""`DecisionBatch`: the decisions of one batch request, column by column.

A batch of 1,000 decisions held as 1,000 `DecisionRecord` objects spends more time building
and taking apart those objects than scoring, sampling and logging take together. A
`DecisionBatch` keeps each field as one column (a numpy array, or one list) from the policy's
batch call to the store's insert and the answer's rendering. Backends that have no columnar
insert log `DecisionBatch.records`; the decisions logged are the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec.store import DecisionRecord

__all__ = ["DecisionBatch"]


@dataclass(frozen=True)
class DecisionBatch:
    """`n` decisions made together, one entry per decision in each column.

    Row ``i`` is the decision `records` returns at ``i``: ``event_ids[i]``, served action
    ``actions[action_index[i]]`` with probability ``probability[i]``, the full distribution
    ``probabilities[i]`` (aligned with `actions`), and so on. Every decision of a batch
    shares its time, model version and actions; none is deferred.

    Examples
    --------
    >>> import numpy as np
    >>> batch = DecisionBatch(
    ...     event_ids=["a", "b"], created_at=0.0, model_version="v@0",
    ...     contexts=[{"n": 1}, {"n": 2}], X=np.eye(2), actions=("x", "y"),
    ...     eligible=[("x", "y"), ("x", "y")], action_index=np.array([1, 0]),
    ...     probability=np.array([0.9, 0.1]),
    ...     probabilities=np.array([[0.1, 0.9], [0.1, 0.9]]), scores=np.zeros((2, 2)),
    ... )
    >>> len(batch), [r.action for r in batch.records()]
    (2, ['y', 'x'])
    """

    event_ids: list[str]
    created_at: float
    model_version: str
    contexts: list[dict[str, Any]]
    X: NDArray[np.float64]  # (n, d)
    actions: tuple[str, ...]
    eligible: Sequence[tuple[str, ...]]  # what each decision could serve
    action_index: NDArray[np.intp]  # (n,)
    probability: NDArray[np.float64]  # (n,): of the served action
    probabilities: NDArray[np.float64]  # (n, K)
    scores: NDArray[np.float64]  # (n, K)
    user_ids: Sequence[str | None] | None = None

    def __len__(self) -> int:
        return len(self.event_ids)

    def records(self) -> list[DecisionRecord]:
        """The decisions one `DecisionRecord` each (for backends that log records)."""
        users = self.user_ids if self.user_ids is not None else [None] * len(self)
        served = self.probability.tolist()
        return [
            DecisionRecord(
                event_id=event_id,
                created_at=self.created_at,
                model_version=self.model_version,
                context=context,
                x=x,
                actions=self.actions,
                eligible=eligible,
                action_index=index,
                probability=p,
                probabilities=ps,
                scores=ss,
                user_id=user,
            )
            for event_id, context, x, eligible, index, p, ps, ss, user in zip(
                self.event_ids, self.contexts, self.X, self.eligible,
                self.action_index.tolist(), served, self.probabilities, self.scores, users,
                strict=True,
            )
        ]  # fmt: skip
