"""The provisioning SQL of eventstore.instances, rendered without a server: names,
least-privilege grants, limits, the SCRAM verifier and the service URL."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from eventstore import instances
from eventstore.errors import InvalidInput


@pytest.mark.parametrize("name", ["a", "shop_eu", "x1"])
def test_valid_names_give_the_roles(name: str) -> None:
    assert instances.validate_name(name) == name
    assert instances.service_role(name) == f"convoy_{name}"
    assert instances.owner_role(name) == f"convoy_{name}_owner"


@pytest.mark.parametrize(
    "name", ["", "A", "1a", "a-b", "a;drop", "x" * 32, "pg_x", "admin", "public", "convoy_admin", "b_owner"]
)
def test_bad_or_reserved_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        instances.validate_name(name)


def test_events_are_granted_select_and_insert_only() -> None:
    grants = instances.render_grants("a")
    assert "GRANT SELECT, INSERT ON a.events TO convoy_a" in grants
    assert not any("a.events" in g and ("UPDATE" in g or "DELETE" in g or "TRUNCATE" in g) for g in grants)
    assert not any(g.startswith("GRANT") and "PUBLIC" in g for g in grants)
    assert not any("ALL" in g for g in grants if g.startswith("GRANT"))
    # Everything is revoked first, so an upgrade's grants are exactly these.
    revoke_tables = grants.index("REVOKE ALL ON ALL TABLES IN SCHEMA a FROM PUBLIC, convoy_a")
    table_grants = [i for i, g in enumerate(grants) if g.startswith("GRANT") and " ON a." in g]
    assert len(table_grants) == len(instances.TABLE_PRIVILEGES) and min(table_grants) > revoke_tables
    assert "REVOKE ALL ON ALL FUNCTIONS IN SCHEMA a FROM PUBLIC, convoy_a" in grants


def test_every_table_the_migrations_create_is_granted() -> None:
    from eventstore.postgres import migration_files

    created = {
        line.split()[2].rstrip("(")
        for _, file in migration_files()
        for line in file.read_text().splitlines()
        if line.startswith("CREATE TABLE")
    }
    assert created | {"schema_migrations"} == set(instances.TABLE_PRIVILEGES)


def test_roles_schema_and_public() -> None:
    sql = instances.render_roles("a", instances.scram_verifier("pw"))
    assert sql[0] == "CREATE ROLE convoy_a_owner NOLOGIN"
    assert any(s.startswith("CREATE ROLE convoy_a LOGIN") for s in sql)
    assert "CREATE SCHEMA a AUTHORIZATION convoy_a_owner" in sql
    assert "REVOKE ALL ON SCHEMA a FROM PUBLIC" in sql
    assert not any("'pw'" in s for s in sql)  # only the verifier reaches the server
    with pytest.raises(InvalidInput):
        instances.render_roles("a", "plain password")


def test_drop_removes_schema_roles_and_registry_row() -> None:
    sql = instances.render_drop("a")
    assert sql[0] == "DROP SCHEMA IF EXISTS a CASCADE"
    assert "DROP ROLE IF EXISTS convoy_a" in sql and "DROP ROLE IF EXISTS convoy_a_owner" in sql
    assert sql[-1] == "DELETE FROM convoy_admin.instances WHERE name = 'a'"


def test_scram_verifier_follows_rfc_7677() -> None:
    salt = b"0123456789abcdef"
    verifier = instances.scram_verifier("secret", salt=salt, iterations=4096)
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt_b64 = params.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert (method, iterations, base64.b64decode(salt_b64)) == ("SCRAM-SHA-256", "4096", salt)
    salted = hashlib.pbkdf2_hmac("sha256", b"secret", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert instances.scram_verifier("secret") != instances.scram_verifier("secret")  # fresh salt


def test_service_url_swaps_the_credentials_only() -> None:
    url = instances.service_url("postgresql://admin:s3cret@db.example:5433/convoy?sslmode=require&user=x", "a", "p/w")
    assert url == "postgresql://convoy_a:p%2Fw@db.example:5433/convoy?sslmode=require"
    assert "s3cret" not in url
    with pytest.raises(InvalidInput):
        instances.service_url("mysql://x@y/z", "a", "pw")


def test_limits_are_validated() -> None:
    assert instances.parse_limits({"max_storage": "10G", "max_memory": "512M", "max_streams": 5, "max_consumers": None}) == {
        "max_storage": 10 * 1024**3,
        "max_memory": 512 * 1024**2,
        "max_streams": 5,
    }
    assert instances.parse_limits({"max_storage": "1024"}) == {"max_storage": 1024}
    for bad in ({"max_storage": "lots"}, {"max_streams": "0"}, {"max_streams": "-1"}, {"max_cpus": "1"}):
        with pytest.raises(InvalidInput):
            instances.parse_limits(bad)
