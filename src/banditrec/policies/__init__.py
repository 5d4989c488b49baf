"""Policies: per-action scores from a feature vector, and learning from (x, action, reward).

One interface (`Policy`), one contract test suite, one registry (`POLICIES`):

==================  =========================  ==========================================
name                class                      what it serves
==================  =========================  ==========================================
``auto``            `AutoLinUCB`               LinUCB choosing its own width (the default)
``linucb``          `LinUCB`                   ε-greedy over per-action upper bounds
``hybrid_linucb``   `HybridLinUCB`             same, with coefficients shared by actions
``thompson``        `LinearThompsonSampling`   P(argmax) of posterior draws (Monte Carlo)
``epsilon_greedy``  `RidgeEpsilonGreedy`       ε-greedy over ridge means
``softmax``         `RidgeSoftmax`             softmax over ridge means (temperature)
``squarecb``        `SquareCB`                 inverse-gap weighting over ridge means
``uniform``         `UniformRandom`            every eligible action alike
``popular``         `MostPopular`              ε-greedy over smoothed mean rewards
``fixed_rule``      `FixedRule`                the app's own rule, with an ε floor
==================  =========================  ==========================================

Layout: `base` (the interface), `ridge` (per-action ridge statistics and the forgetting
factor), `linear`, `auto`, `hybrid`, `thompson`, `baselines`, `rules`, `registry`.
"""

from banditrec.policies.auto import AutoLinUCB
from banditrec.policies.base import Policy, Scores
from banditrec.policies.baselines import MostPopular, UniformRandom
from banditrec.policies.hybrid import HybridLinUCB
from banditrec.policies.linear import LinUCB, RidgeEpsilonGreedy, RidgeSoftmax, SquareCB
from banditrec.policies.registry import DEFAULT_POLICY, POLICIES, build_policy
from banditrec.policies.ridge import RidgePolicy
from banditrec.policies.rules import FixedRule
from banditrec.policies.thompson import LinearThompsonSampling

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "AutoLinUCB",
    "FixedRule",
    "HybridLinUCB",
    "LinUCB",
    "LinearThompsonSampling",
    "MostPopular",
    "Policy",
    "RidgeEpsilonGreedy",
    "RidgePolicy",
    "RidgeSoftmax",
    "Scores",
    "SquareCB",
    "UniformRandom",
    "build_policy",
]
