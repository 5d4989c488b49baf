"""Offline evaluation: which configuration would have done best on this log, and how sure are we?

`banditrec evaluate` reads a logged history (the event log, or a CSV in the simulation format),
builds candidate policies (a grid of parameters, named candidates, every registered policy),
estimates each candidate's value with the off-policy estimators of `banditrec.ope` (95%
bootstrap intervals, effective sample sizes), compares it with the logging policy and ranks the
candidates. `banditrec.report` turns the result into HTML, PNG and JSON.

The protocol (docs/evaluation.md) is a **time split**: candidates learn, off-policy, from the
first part of the log in log order (`Policy.update_batch` on the logged actions and rewards,
from the prior), are then frozen, and their serving distributions on the later, held-out part
are evaluated with IPS, SNIPS, DM and DR (reward model cross-fitted on the held-out part); on a
uniform-random log the replay estimator is added. The logging policy's value is the mean
reward of the same held-out rounds. The alternative `replay` protocol (uniform logs only) runs
each candidate as an online learner through the held-out rounds (Li et al. 2011).

Nothing here prints or draws: progress goes through a callback, so the CLI owns the screen.

The modules, in the order a run uses them:

- `config`: the options (`EvaluationConfig`) and `EvaluationError`;
- `data`: the logged rounds (`LoggedRounds`), from the event log or a CSV;
- `candidates`: candidate specifications, grids and TOML files, checked against the registry;
- `live`: the live policy and its neighbours, replayed along the log from the model that
  served it (the candidates a log with little exploration can judge);
- `protocols`: `evaluate`, the time split and replay protocols;
- `ranking`: the results, the comparison with the logging policy, ranks and verdicts.
"""

from banditrec.evaluation.candidates import (
    Candidate,
    CandidateError,
    default_candidates,
    grid_candidates,
    load_candidates_file,
    make_candidate,
    parse_candidate,
    parse_grid,
    unique,
)
from banditrec.evaluation.config import ESTIMATORS, PROTOCOLS, EvaluationConfig, EvaluationError
from banditrec.evaluation.data import LoggedRounds, load_csv, load_event_log
from banditrec.evaluation.live import LIVE, LiveModel, find_live_model
from banditrec.evaluation.protocols import evaluate
from banditrec.evaluation.ranking import RANKING_TEXT, CandidateResult, EvaluationResult

__all__ = [
    "ESTIMATORS",
    "LIVE",
    "PROTOCOLS",
    "RANKING_TEXT",
    "Candidate",
    "CandidateError",
    "CandidateResult",
    "EvaluationConfig",
    "EvaluationError",
    "EvaluationResult",
    "LiveModel",
    "LoggedRounds",
    "default_candidates",
    "evaluate",
    "find_live_model",
    "grid_candidates",
    "load_candidates_file",
    "load_csv",
    "load_event_log",
    "make_candidate",
    "parse_candidate",
    "parse_grid",
    "unique",
]
