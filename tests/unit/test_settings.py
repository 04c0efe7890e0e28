"""Settings come from the environment once, at the edge, and bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventstore.errors import InvalidInput
from eventstore.settings import Settings


def test_defaults_and_overrides() -> None:
    settings = Settings.from_env({"HOME": "/home/ada"})
    assert settings.state_dir == Path("/home/ada/.local/share/convoy")
    assert (settings.instance, settings.nats_replicas, settings.database_url) == ("convoy", 1, None)
    custom = Settings.from_env({"CONVOY_NATS_REPLICAS": "3", "CONVOY_INSTANCE": "blue", "HOME": "/h"})
    assert (custom.instance, custom.nats_replicas) == ("blue", 3)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CONVOY_NATS_REPLICAS", "three", "must be a number of replicas"),
    ("CONVOY_NATS_REPLICAS", "7", "must be 1 to 5"),
    ("CONVOY_INSTANCE", "Blue Team", "invalid instance name"),
])
def test_bad_values_say_what_to_fix(name: str, value: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Settings.from_env({name: value, "HOME": "/h"})
