"""Named loops: several decision loops in one server (docs/loops.md).

`definition` (what defines a loop, and its settings), `catalog` (where definitions are
kept), `registry` (the open loops of a process); the errors are in `banditrec.errors`,
the HTTP routes in `banditrec.api.loop_routes`.
"""

from banditrec.errors import LoopError, LoopExistsError, LoopNotFoundError
from banditrec.loops.definition import (
    DEFAULT_LOOP,
    LOOP_NAME_PATTERN,
    LOOP_SETTINGS,
    LoopRecord,
    LoopSpec,
    check_loop_name,
    loop_settings,
)
from banditrec.loops.registry import Loop, LoopRegistry, read_loops_file

__all__ = [
    "DEFAULT_LOOP",
    "LOOP_NAME_PATTERN",
    "LOOP_SETTINGS",
    "Loop",
    "LoopError",
    "LoopExistsError",
    "LoopNotFoundError",
    "LoopRecord",
    "LoopRegistry",
    "LoopSpec",
    "check_loop_name",
    "loop_settings",
    "read_loops_file",
]
