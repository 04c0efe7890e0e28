"""Resources reach the rendered spec: the naming rule, explicit mappings, visibility
(shadowing, another application's resource never visible), and a missing resource
failing the channel's deployment instead of deploying without it."""

from __future__ import annotations

import pytest

from schemas.convoy.v1 import events_pb2 as E
from schemas.convoy.v1 import resources_pb2 as R
from services import resourceenv
from services.planner.render import RenderError, render, spec_hash
from tests.unit.planner.world import World, changes, channel, intents

INFRA, APP = R.RESOURCE_SCOPE_INFRASTRUCTURE, R.RESOURCE_SCOPE_APPLICATION


def resource(name: str, *, app: str = "", plain: dict[str, str] | None = None,
             secret: dict[str, R.SecretRef] | None = None) -> R.Resource:
    r = R.Resource(name=name, scope=APP if app else INFRA, application=app, kind="database", attributes=plain or {})
    for key, ref in (secret or {}).items():
        r.secret_attributes[key].CopyFrom(ref)
    return r


def lookup_of(*resources: R.Resource) -> resourceenv.Lookup:
    table = {(r.scope, r.application, r.name): r for r in resources}
    return lambda app, name: resourceenv.visible(table, app, name)


def release(*, uses: list[str], mappings: list[R.ResourceEnv] | None = None, env: dict[str, str] | None = None,
            app: str = "shop") -> R.Release:
    service = R.Service(application=app, name="web", resources=uses, resource_env=mappings or [],
                        programs=[R.Program(name="web", command=["web"], env=env or {}),
                                  R.Program(name="side", command=["side"])])
    return R.Release(id="rel-1", application=app, service="web", version="v1", config=service)


def test_env_name_upper_cases_and_replaces_everything_outside_a_z_0_9() -> None:
    assert resourceenv.env_name("orders-db", "host") == "CONVOY_RESOURCE_ORDERS_DB_HOST"
    assert resourceenv.env_name("q.v2", "max-conn.s") == "CONVOY_RESOURCE_Q_V2_MAX_CONN_S"


def test_plain_attributes_become_env_and_secret_ones_references_in_every_program() -> None:
    db = resource("orders-db", plain={"host": "db.internal", "port": "5432"},
                  secret={"password": R.SecretRef(env="DB_PASSWORD")})

    spec = render(release(uses=["orders-db"]), "staging", lookup_of(db))

    for program in spec.programs:
        assert dict(program.env) == {"CONVOY_RESOURCE_ORDERS_DB_HOST": "db.internal",
                                     "CONVOY_RESOURCE_ORDERS_DB_PORT": "5432"}
        assert {k: v.env for k, v in program.secret_env.items()} == {"CONVOY_RESOURCE_ORDERS_DB_PASSWORD": "DB_PASSWORD"}
    assert list(spec.resources) == ["orders-db"]


def test_an_explicit_mapping_adds_a_name_for_plain_and_secret_attributes() -> None:
    db = resource("orders-db", plain={"url": "postgres://db/orders"}, secret={"password": R.SecretRef(file="/run/pw")})
    mappings = [R.ResourceEnv(env="DATABASE_URL", resource="orders-db", attribute="url"),
                R.ResourceEnv(env="PGPASSWORD", resource="orders-db", attribute="password")]

    spec = render(release(uses=["orders-db"], mappings=mappings), "staging", lookup_of(db))

    program = spec.programs[0]
    assert program.env["DATABASE_URL"] == "postgres://db/orders"
    assert program.env["CONVOY_RESOURCE_ORDERS_DB_URL"] == "postgres://db/orders"
    assert program.secret_env["PGPASSWORD"].file == "/run/pw"
    assert "PGPASSWORD" not in program.env


def test_the_applications_own_resource_shadows_an_infrastructure_one() -> None:
    infra = resource("cache", plain={"host": "shared"})
    own = resource("cache", app="shop", plain={"host": "shop-only"})

    spec = render(release(uses=["cache"]), "staging", lookup_of(infra, own))

    assert spec.programs[0].env["CONVOY_RESOURCE_CACHE_HOST"] == "shop-only"


def test_another_applications_resource_is_never_visible() -> None:
    theirs = resource("cache", app="billing", plain={"host": "billing-only"})

    with pytest.raises(RenderError, match="resource 'cache' is not visible to application 'shop'"):
        render(release(uses=["cache"]), "staging", lookup_of(theirs))


@pytest.mark.parametrize(
    ("resources", "mappings", "env", "error"),
    [
        ([resource("db", plain={"a_b": "1", "a-b": "2"})], [], {}, "would come from both db/a-b and db/a_b"),
        ([resource("db", plain={"host": "h"})], [R.ResourceEnv(env="CONVOY_RESOURCE_DB_HOST", resource="db", attribute="host")],
         {}, "would come from both"),
        ([resource("db", plain={"host": "h"})], [R.ResourceEnv(env="X", resource="db", attribute="nope")], {},
         "resource 'db' has no attribute 'nope'"),
        ([resource("db", plain={"host": "h"})], [], {"CONVOY_RESOURCE_DB_HOST": "mine"},
         "CONVOY_RESOURCE_DB_HOST is also set by resource attribute db/host"),
    ],
    ids=["two-attributes-one-name", "explicit-equals-automatic", "unknown-attribute", "program-sets-it"],
)
def test_collisions_and_unknown_attributes_refuse_to_render(
    resources: list[R.Resource], mappings: list[R.ResourceEnv], env: dict[str, str], error: str
) -> None:
    with pytest.raises(RenderError, match=error):
        render(release(uses=["db"], mappings=mappings, env=env), "staging", lookup_of(*resources))


def test_the_hash_covers_the_attributes_so_a_relink_changes_only_the_next_render() -> None:
    before = render(release(uses=["db"]), "staging", lookup_of(resource("db", plain={"host": "old"})))
    after = render(release(uses=["db"]), "staging", lookup_of(resource("db", plain={"host": "new"})))

    assert spec_hash(before) != spec_hash(after)
    assert spec_hash(before) == spec_hash(render(release(uses=["db"]), "staging", lookup_of(resource("db", plain={"host": "old"}))))


# -- through the planner -------------------------------------------------------------


def shop_using(world: World, *, uses: list[str]) -> None:
    world.setup(channel("staging", "stg-1"))
    service = world.service("shop", "web")
    service.resources[:] = uses
    world.feed(E.ServiceConfigured(service=service))


def test_the_planner_renders_the_catalogs_resources_into_the_intent() -> None:
    world = World()
    shop_using(world, uses=["db"])
    world.feed(E.ResourceLinked(resource=resource("db", plain={"host": "db1"}, secret={"pw": R.SecretRef(env="PW")})))

    [intent] = intents(world.deploy("v1"))

    assert intent.spec.programs[0].env["CONVOY_RESOURCE_DB_HOST"] == "db1"
    assert intent.spec.programs[0].secret_env["CONVOY_RESOURCE_DB_PW"].env == "PW"


def test_a_resource_not_visible_at_render_fails_the_channel_with_the_reason() -> None:
    world = World()
    shop_using(world, uses=["db"])  # declared, but the resource was never linked (or unlinked since)

    out = world.deploy("v1")

    assert intents(out) == []
    assert changes(out)[-1] == ("staging", "DEPLOYING", "FAILED")
    assert "resource 'db' is not visible to application 'shop'" in world.reason("staging")


def test_relinking_a_resource_issues_nothing_and_the_next_render_reads_the_new_value() -> None:
    world = World()
    shop_using(world, uses=["db"])
    world.feed(E.ResourceLinked(resource=resource("db", plain={"host": "db1"})))
    [first] = intents(world.deploy("v1"))
    world.healthy([first])

    assert intents(world.feed(E.ResourceLinked(resource=resource("db", plain={"host": "db2"})))) == []

    [second] = intents(world.deploy("v2"))
    assert second.spec.programs[0].env["CONVOY_RESOURCE_DB_HOST"] == "db2"
    assert second.spec_hash != first.spec_hash
