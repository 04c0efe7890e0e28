"""docs/integrations.md's signature check accepts what the notifier signs, and nothing else."""

from __future__ import annotations

import re
import time
from pathlib import Path

from services.notifier.webhook import H_WEBHOOK_SIGNATURE, Webhook

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def test_the_documented_verify_accepts_the_notifiers_signature_and_refuses_replays() -> None:
    [snippet] = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    scope: dict[str, object] = {}
    exec(snippet, scope)  # noqa: S102 - our own documentation
    verify = scope["verify"]
    body = b'{"text": "shop/web v2 in prod: FAILED"}'
    webhook = Webhook(url="https://hooks.example/x", secret="s3cret")
    fresh = webhook.signature_headers(body, now=time.time())[H_WEBHOOK_SIGNATURE]
    assert verify(body, fresh, "s3cret")  # type: ignore[operator]
    assert not verify(body + b" ", fresh, "s3cret")  # type: ignore[operator]
    assert not verify(body, fresh, "other")  # type: ignore[operator]
    stale = webhook.signature_headers(body, now=time.time() - 301)[H_WEBHOOK_SIGNATURE]
    assert not verify(body, stale, "s3cret")  # type: ignore[operator]
    future = webhook.signature_headers(body, now=time.time() + 301)[H_WEBHOOK_SIGNATURE]
    assert not verify(body, future, "s3cret")  # type: ignore[operator]
    assert not verify(body, webhook.sign(body), "s3cret")  # type: ignore[operator]  # the old header is not enough


def test_the_documented_categories_are_the_ones_the_log_uses() -> None:
    from services.planner.engine import INPUT_CATEGORIES

    documented = re.search(r"Categories:\n(.*?)\.\n", DOC.read_text(), re.S)
    assert documented is not None
    names = set(re.findall(r"`([a-z]+)`", documented.group(1)))
    assert set(INPUT_CATEGORIES) <= names and {"intent", "convergence", "token", "planner"} <= names


def test_the_gate_and_github_recipes_are_valid_config() -> None:
    """The recipes (ServiceNow, Jira, the attachment, GitHub) load, and convoy's checks
    find nothing wrong in them: the expressions parse."""
    from cli.config import loader
    from cli.config.checks import check_semantics
    from services.api.domain.integrations import check_external_approval
    from services.api.domain.errors import Problems

    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 4
    kinds = []
    for index, text in enumerate(blocks):
        for document in loader.loads(text, file=f"docs/integrations.md example {index}"):
            kinds.append(document.kind)
            problems: list[str] = []
            check_semantics(document.message, lambda path, message: problems.append(f"{path}: {message}"))
            assert problems == []
            if document.kind == "protection":
                found = Problems()
                check_external_approval(found, "protection.external_approval", document.message.external_approval)
                found.raise_if_any()
    assert kinds.count("protection") == 2 and kinds.count("application") == 2
