"""Which of a release's images are pinned by digest, and to what.

A program whose image (after the release's parameter values fill its placeholders) is
on a declared registry is pinned: the release records the image as asked for, the
digest the registry answered when the release was created, and the reference agents
apply (`host/repository@sha256:…`). The shell asks the registry (services.api.images)
for exactly the images `wanted` lists, then `pin` — pure — builds the records from
those answers. An image that names a digest itself is pinned to it. Images on no
declared registry (a local process's name, a public image nobody declared) are left as
they are: Convoy only asks registries it was told about.

A pinned image is the same in every channel: a channel override of a parameter the
image uses would run a different image there, so such a deploy is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from schemas.convoy.v1 import resources_pb2
from services.api.domain.errors import ImagesChanged, InvalidArgument, Problems
from services.api.domain.registries import image_registry
from services.api.domain.state import State
from services.api.domain.validation import q
from services.registry.reference import ImageReference

_PARAMETER: Final = re.compile(r"\{\{\s*\.Parameters\.([A-Za-z0-9_-]+)\s*\}\}")


def substitute(text: str, parameters: Mapping[str, str]) -> str:
    """The planner's rule (services.planner.render.substitute), for images."""
    return _PARAMETER.sub(lambda m: parameters.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True, slots=True)
class Wanted:
    program: str
    image: str
    """As asked for, placeholders filled: `host/repository:tag`."""
    reference: ImageReference
    registry: resources_pb2.Registry


def wanted(state: State, config: resources_pb2.Service, parameters: Mapping[str, str]) -> list[Wanted]:
    """The images of `config` that are on declared registries."""
    found = []
    for program in config.programs:
        if not program.image:
            continue
        image = substitute(program.image, parameters)
        registry = image_registry(state, image)
        if registry is None:
            continue
        try:
            reference = ImageReference.parse(image)
        except ValueError as e:
            raise InvalidArgument.at("image", f"{e} (it is on registry {q(registry.name)})") from None
        found.append(Wanted(program.name, image, reference, registry))
    return found


def pin(
    state: State, config: resources_pb2.Service, parameters: Mapping[str, str], digests: Mapping[str, str]
) -> list[resources_pb2.PinnedImage]:
    problems = Problems()
    pins = []
    for i, want in enumerate(wanted(state, config, parameters)):
        program = next(p for p in config.programs if p.name == want.program)
        for override in config.overrides:
            if substitute(program.image, {**parameters, **override.parameters}) != want.image:
                problems.add(
                    f"programs[{i}].image",
                    f"image {q(program.image)} depends on a parameter channel {q(override.channel)} overrides; "
                    "a release pins one digest for every channel — drop the override or the placeholder",
                )
        if want.reference.tag is None and want.reference.digest is None:
            problems.add(f"programs[{i}].image", f"image {q(want.image)} names neither a tag nor a digest")
            continue
        digest = want.reference.digest or digests.get(want.image)
        if digest is None:
            raise ImagesChanged(
                f"image {q(want.image)} was not resolved before the decision (the service changed meanwhile); "
                "nothing was recorded — send the deploy again"
            )
        if want.reference.digest and digests.get(want.image, digest) != digest:
            problems.add(f"programs[{i}].image", f"registry {q(want.registry.name)} answered another digest for {q(want.image)}")
        pins.append(
            resources_pb2.PinnedImage(
                program=want.program,
                image=want.image,
                digest=digest,
                registry=want.registry.name,
                reference=want.reference.pinned(digest),
            )
        )
    problems.raise_if_any()
    return pins
