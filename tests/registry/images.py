"""Pushing images to a registry over plain HTTP, as `docker push` does, for tests: blobs
(POST an upload, PUT its Location with `?digest=`), an image config and one gzip tar layer
built deterministically from a seed, then the manifest (OCI or Docker v2) or a multi-arch
index. Every push returns the digest the registry must answer: sha256 of the manifest bytes
it PUT.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp

from services.registry.client import basic_authorization

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ALL_MANIFESTS = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(seed: str) -> tuple[bytes, str]:
    """(gzip tar bytes, diff id): one file whose content is the seed; no timestamps, so the
    same seed gives the same bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        content = f"convoy test layer {seed}\n".encode()
        info = tarfile.TarInfo("seed.txt")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0), sha256(raw.getvalue())


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def json(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class Pusher:
    def __init__(self, *, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        self._auth = basic_authorization(username, password)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Pusher:
        self._session = aiohttp.ClientSession(headers={"Authorization": self._auth})
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with Pusher(...)`"
        return self._session

    async def blob(self, repository: str, data: bytes) -> str:
        digest = sha256(data)
        async with self.session.post(f"{self.url}/v2/{repository}/blobs/uploads/") as started:
            assert started.status == 202, f"blob upload start: {started.status} {await started.text()}"
            location = urljoin(f"{self.url}/", started.headers["Location"])
        separator = "&" if "?" in location else "?"
        async with self.session.put(
            f"{location}{separator}digest={digest}", data=data, headers={"Content-Type": "application/octet-stream"}
        ) as done:
            assert done.status == 201, f"blob upload: {done.status} {await done.text()}"
        return digest

    async def manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        async with self.session.put(
            f"{self.url}/v2/{repository}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
        ) as put:
            assert put.status == 201, f"manifest PUT {repository}:{reference}: {put.status} {await put.text()}"
        return sha256(body)

    async def image_manifest(self, repository: str, *, seed: str, docker: bool = False,
                             architecture: str = "amd64") -> tuple[bytes, str]:
        """Push the blobs of one image; (manifest bytes, media type), not yet PUT."""
        data, diff_id = layer(f"{seed}/{architecture}")
        config = json.dumps({
            "architecture": architecture, "os": "linux", "created": "2026-01-01T00:00:00Z",
            "config": {"Labels": {"convoy.test.seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }, sort_keys=True).encode()
        config_digest = await self.blob(repository, config)
        layer_digest = await self.blob(repository, data)
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": Descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config_digest, len(config)).json(),
            "layers": [Descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer_digest, len(data)).json()],
        }
        return json.dumps(manifest, sort_keys=True).encode(), media_type

    async def image(self, repository: str, tag: str, *, seed: str, docker: bool = False) -> str:
        """Push an image under `tag`; its manifest digest. A new seed under an existing tag
        moves the tag (different bytes); the same seed under a new tag is a retag."""
        body, media_type = await self.image_manifest(repository, seed=seed, docker=docker)
        return await self.manifest(repository, tag, body, media_type)

    async def index(self, repository: str, tag: str, *, seed: str, docker: bool = False,
                    architectures: tuple[str, ...] = ("amd64", "arm64")) -> tuple[str, list[str]]:
        """A multi-arch image: the children pushed by digest, then the index (OCI) or the
        manifest list (Docker) under `tag`. (index digest, child digests)."""
        children: list[dict] = []
        digests: list[str] = []
        for architecture in architectures:
            body, media_type = await self.image_manifest(repository, seed=seed, docker=docker, architecture=architecture)
            digest = await self.manifest(repository, sha256(body), body, media_type)
            digests.append(digest)
            children.append(Descriptor(media_type, digest, len(body)).json() | {"platform": {"architecture": architecture, "os": "linux"}})
        media_type = DOCKER_LIST if docker else OCI_INDEX
        index = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": children}, sort_keys=True).encode()
        return await self.manifest(repository, tag, index, media_type), digests

    async def retag(self, repository: str, source: str, tag: str) -> str:
        """The same manifest bytes under another tag (what `docker tag` + push does)."""
        async with self.session.get(
            f"{self.url}/v2/{repository}/manifests/{source}", headers={"Accept": ALL_MANIFESTS}
        ) as got:
            assert got.status == 200, f"manifest GET {repository}:{source}: {got.status}"
            body, media_type = await got.read(), got.headers["Content-Type"]
        return await self.manifest(repository, tag, body, media_type)

    async def delete(self, repository: str, digest: str) -> None:
        async with self.session.delete(f"{self.url}/v2/{repository}/manifests/{digest}") as deleted:
            assert deleted.status == 202, f"manifest DELETE {repository}@{digest}: {deleted.status}"
