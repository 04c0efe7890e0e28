"""The client against Debian's real registry (distribution 2.8.2, htpasswd = Basic auth):
tags resolve to the digests the pusher PUT, for OCI, Docker v2 and multi-arch images (2.8
answers 404 for OCI manifests fetched without their media type in Accept, so this proves the
header); retags and moved tags; and each refusal as the precise error class."""

from __future__ import annotations

import uuid

import pytest

from services.registry import errors
from services.registry.client import RegistryClient
from tests.registry import images
from tests.registry.real import RealRegistry


def repo() -> str:
    return f"demo/app-{uuid.uuid4().hex[:8]}"


def client(registry: RealRegistry, *, password: str | None = None) -> RegistryClient:
    return RegistryClient(
        name="local", url=registry.url, username=registry.username, password=password or registry.password
    )


async def test_tags_resolve_to_the_pushed_digests(real_registry: RealRegistry, pusher: images.Pusher) -> None:
    name = repo()
    oci = await pusher.image(name, "1.0.0", seed="oci")
    docker = await pusher.image(name, "1.0.1", seed="docker", docker=True)
    index, children = await pusher.index(name, "1.1.0", seed="multi")
    manifest_list, _ = await pusher.index(name, "1.2.0", seed="list", docker=True)
    async with client(real_registry) as registry:
        found = await registry.resolve(name, "1.0.0")
        assert (found.digest, found.media_type) == (oci, images.OCI_MANIFEST)
        assert found.size is not None and found.size > 0
        assert (await registry.resolve(name, "1.0.1")).digest == docker
        multi = await registry.resolve(name, "1.1.0")
        assert (multi.digest, multi.media_type) == (index, images.OCI_INDEX)
        assert index not in children
        listed = await registry.resolve(name, "1.2.0")
        assert (listed.digest, listed.media_type) == (manifest_list, images.DOCKER_LIST)
        # What makes this a test of the Accept header: without the index type, 2.8 answers 404.
        async with pusher.session.head(
            f"{real_registry.url}/v2/{name}/manifests/1.1.0", headers={"Accept": images.OCI_MANIFEST}
        ) as narrow:
            assert narrow.status == 404
        # A digest resolves to itself (and is checked against the answer).
        assert (await registry.resolve(name, children[1])).digest == children[1]


async def test_a_retag_resolves_to_the_same_digest_and_a_moved_tag_to_the_new_one(
    real_registry: RealRegistry, pusher: images.Pusher
) -> None:
    name = repo()
    first = await pusher.image(name, "latest", seed="one")
    assert await pusher.retag(name, "latest", "2.0.0") == first
    async with client(real_registry) as registry:
        assert (await registry.resolve(name, "2.0.0")).digest == first
        assert (await registry.resolve(name, "latest")).digest == first
        moved = await pusher.image(name, "latest", seed="two")
        assert moved != first
        assert (await registry.resolve(name, "latest")).digest == moved
        assert (await registry.resolve(name, "2.0.0")).digest == first


async def test_unknown_tag_and_unknown_repository(real_registry: RealRegistry, pusher: images.Pusher) -> None:
    name = repo()
    await pusher.image(name, "1.0.0", seed="x")
    async with client(real_registry) as registry:
        with pytest.raises(errors.ManifestUnknown) as missing_tag:
            await registry.resolve(name, "9.9.9")
        assert str(missing_tag.value) == f'registry "local": {name}:9.9.9 does not exist (404 MANIFEST_UNKNOWN); not retryable'
        assert (missing_tag.value.status, missing_tag.value.retryable, missing_tag.value.repository) == (404, False, name)

        # 2.8 cannot tell a manifest of a repository it has never seen from a missing tag:
        # it answers MANIFEST_UNKNOWN for both; its tag list says NAME_UNKNOWN.
        with pytest.raises(errors.ManifestUnknown) as missing_repo:
            await registry.resolve("demo/never-pushed", "1.0.0")
        assert str(missing_repo.value) == (
            'registry "local": demo/never-pushed:1.0.0 does not exist (404 MANIFEST_UNKNOWN); not retryable'
        )
        with pytest.raises(errors.NameUnknown) as no_tags:
            await registry.list_tags("demo/never-pushed")
        assert str(no_tags.value) == (
            'registry "local": demo/never-pushed (tag list): the repository does not exist '
            "(404 NAME_UNKNOWN: repository name not known to registry); not retryable"
        )


async def test_wrong_password_is_unauthorized(real_registry: RealRegistry, pusher: images.Pusher) -> None:
    name = repo()
    await pusher.image(name, "1.0.0", seed="x")
    async with client(real_registry, password="wrong") as registry:
        with pytest.raises(errors.Unauthorized) as refused:
            await registry.resolve(name, "1.0.0")
    message = str(refused.value)
    assert message.startswith(f'registry "local": {name}:1.0.0: the registry refused the credentials of user "convoy" (401')
    assert message.endswith("not retryable") and "wrong" not in message
    assert refused.value.status == 401
    async with RegistryClient(name="local", url=real_registry.url) as anonymous:
        with pytest.raises(errors.Unauthorized, match=r"requires credentials \(401 Basic\) and none are configured"):
            await anonymous.list_tags(name)


async def test_list_tags_returns_every_tag(real_registry: RealRegistry, pusher: images.Pusher) -> None:
    name = repo()
    pushed = {f"1.{i}.0" for i in range(12)} | {"latest", "v2.0.0-rc.1"}
    first = await pusher.image(name, "seed", seed="same")
    for tag in pushed:
        await pusher.retag(name, "seed", tag)
    async with client(real_registry) as registry:
        tags = await registry.list_tags(name)
        assert sorted(tags) == sorted(pushed | {"seed"})
        # 2.8 ignores `n` (pagination came in 3.0) — the client must still get everything,
        # and `limit` still stops it.
        assert sorted(await registry.list_tags(name, page_size=5)) == sorted(pushed | {"seed"})
        assert len(await registry.list_tags(name, limit=3)) == 3
        assert (await registry.resolve(name, "latest")).digest == first
