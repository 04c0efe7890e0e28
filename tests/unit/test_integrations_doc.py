"""docs/integrations.md's signature check accepts what the notifier signs, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from services.notifier.webhook import Webhook

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def test_the_documented_verify_accepts_the_notifiers_signature() -> None:
    [snippet] = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    scope: dict[str, object] = {}
    exec(snippet, scope)  # noqa: S102 - our own documentation
    verify = scope["verify"]
    body = b'{"text": "shop/web v2 in prod: FAILED"}'
    signature = Webhook(url="https://hooks.example/x", secret="s3cret").sign(body)
    assert verify(body, signature, "s3cret")  # type: ignore[operator]
    assert not verify(body + b" ", signature, "s3cret")  # type: ignore[operator]
    assert not verify(body, signature, "other")  # type: ignore[operator]


def test_the_documented_categories_are_the_ones_the_log_uses() -> None:
    from services.planner.engine import INPUT_CATEGORIES

    documented = re.search(r"Categories:\n(.*?)\.\n", DOC.read_text(), re.S)
    assert documented is not None
    names = set(re.findall(r"`([a-z]+)`", documented.group(1)))
    assert set(INPUT_CATEGORIES) <= names and {"intent", "convergence", "token", "planner"} <= names
