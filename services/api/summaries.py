"""`convoy status` in plain words: what runs in a channel, and what became of its latest
release, as two separate things.

The latest release of a channel is not what runs there: a v2 that failed in staging
leaves prod FAILED at v2 (it can never be promoted) while prod still runs v1, healthy,
untouched. Printing "web v2 FAILED" for prod reads as "prod is broken". So the table
shows the running version (the API's `running_*` fields: the last release that converged
there or that a rollback restored) and, apart from it, one short sentence about the
latest release — "v2 not promoted: staging rolled back" — derived from the channel and
its sibling channels. Reasons are clipped to one line (a probe's HTML body or a runtime's
output stays in `convoy why`). Pure functions of the API's answer: no client, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from schemas.convoy.v1 import api_pb2
from schemas.convoy.v1 import convergence_pb2 as C

LIMIT = 100
"""Characters of a reason a table cell keeps."""
DETAIL = "(convoy why for detail)"
SETTLED = frozenset({C.INSTANCE_STATUS_CONVERGED, C.INSTANCE_STATUS_ROLLED_BACK})
GAVE_UP = {
    C.INSTANCE_STATUS_FAILED: "failed",
    C.INSTANCE_STATUS_ROLLING_BACK: "is rolling back",
    C.INSTANCE_STATUS_ROLLED_BACK: "rolled back",
}
"""A sibling channel's status that means the release will not be promoted from it."""
_MARKUP = re.compile(r"<[!?a-zA-Z/]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def clip(reason: str, limit: int = LIMIT) -> str:
    """The first line (and first sentence) of a reason, at most about `limit` characters;
    when anything was cut, it says where the rest is."""
    text = reason.strip()
    if not text:
        return ""
    short = text.splitlines()[0]
    short = short.split(" — ", 1)[0]  # the planner joins an agent's message lines with " — "
    markup = _MARKUP.search(short)
    if markup:
        short = short[: markup.start()]
    end = _SENTENCE_END.search(short)
    if end and end.end() < len(short):
        short = short[: end.end()]
    short = short.rstrip(" :;,-(—")
    if len(short) > limit:
        short = short[:limit].rsplit(" ", 1)[0].rstrip(" :;,-(—") + "…"
    if short.count("(") > short.count(")"):
        short += ")"
    return short if short == text else f"{short} {DETAIL}"


def running(channel: api_pb2.ChannelConvergence) -> str:
    """The version that runs in the channel, or per runtime when its runtimes differ."""
    on_targets = {t.running_version for t in channel.targets}
    if channel.targets and on_targets != {channel.running_version}:
        return ", ".join(f"{t.running_version or 'nothing'} on {t.runtime}/{t.namespace}" for t in channel.targets)
    return channel.running_version or "nothing"


def settled(channel: api_pb2.ChannelConvergence) -> int:
    """How many of the channel's runtimes are settled on what they run (not mid-change)."""
    return sum(1 for t in channel.targets if t.status in SETTLED and t.running_release_id)


def latest(channel: api_pb2.ChannelConvergence, siblings: Sequence[api_pb2.ChannelConvergence] = ()) -> str:
    """One sentence: the channel's latest release and what became of it. `siblings` are the
    service's other channels (to say why a release was not promoted here)."""
    v, reason, status = channel.version or "?", channel.reason, channel.status
    if status == C.INSTANCE_STATUS_CONVERGED:
        return f"{v} converged"
    waiting = status in (C.INSTANCE_STATUS_PENDING, C.INSTANCE_STATUS_WAITING_PRECONDITIONS)
    deployed_here = any(t.release_id == channel.release_id for t in channel.targets)
    if waiting or (status == C.INSTANCE_STATUS_FAILED and not deployed_here):
        upstream = [
            s for s in siblings
            if s.channel != channel.channel and s.version == channel.version and s.status in GAVE_UP
        ]
        if upstream:
            return f"{v} not promoted: " + ", ".join(f"{s.channel} {GAVE_UP[s.status]}" for s in upstream)
        if status == C.INSTANCE_STATUS_FAILED:
            return f"{v} not promoted: {clip(reason)}"
    if status == C.INSTANCE_STATUS_FAILED:
        return f"{v} failed: {clip(reason)}"
    if status == C.INSTANCE_STATUS_ROLLED_BACK:
        # The planner says "rolled back to v1: <the failure>", or who asked for it.
        return f"{v} {clip(reason)}" if "rollback requested by" in reason else f"{v} failed; {clip(reason)}"
    if status == C.INSTANCE_STATUS_ROLLING_BACK:
        return f"{v} rolling back: {clip(reason)}"
    if status in (C.INSTANCE_STATUS_WAITING_APPROVAL, C.INSTANCE_STATUS_WAITING_PRECONDITIONS):
        return f"{v} {clip(reason)}" if reason.startswith("waiting") else f"{v} waiting: {clip(reason)}"
    if status in (C.INSTANCE_STATUS_PAUSED, C.INSTANCE_STATUS_REPLACED):
        return f"{v} {clip(reason)}"  # "paused: …", "replaced by v3"
    words = C.InstanceStatus.Name(status).removeprefix("INSTANCE_STATUS_").lower().replace("_", " ")
    return f"{v} {words}" + (f": {clip(reason)}" if reason else "")
