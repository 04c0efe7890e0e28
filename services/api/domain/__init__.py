"""Convoy's API domain core: pure `decide(state, command)` and `evolve(state, event)`.

The API shell turns each mutating request into a `Command`, asks `decide` what it means
against the catalog `State`, appends the resulting events and folds them back with
`evolve`. Nothing here performs I/O or reads the clock (only protobuf and the standard
library are imported), so every rule is testable as a plain function call.
"""

from services.api.domain.approvals import approvals_given, rejections_given
from services.api.domain.bypass import bypass_targets, is_bypassed
from services.api.domain.commands import Command, Decision, Minted, StreamEvent
from services.api.domain.decider import decide
from services.api.domain.errors import (
    AlreadyExists,
    BadCommandContext,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Violation,
)
from services.api.domain.folding import evolve, fold
from services.api.domain.invariants import catalog_violations
from services.api.domain.state import State

__all__ = [
    "AlreadyExists",
    "BadCommandContext",
    "Command",
    "Decision",
    "FailedPrecondition",
    "InvalidArgument",
    "Minted",
    "NotFound",
    "PermissionDenied",
    "State",
    "StreamEvent",
    "Violation",
    "approvals_given",
    "bypass_targets",
    "catalog_violations",
    "decide",
    "evolve",
    "fold",
    "is_bypassed",
    "rejections_given",
]
