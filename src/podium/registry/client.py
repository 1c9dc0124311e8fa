"""Podium's model registry: push, pull, tag, list, show and remove models in an OCI registry."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urljoin

from podium.errors import InvalidInput, PodiumError
from podium.registry import artifact, media
from podium.registry.artifact import Progress, hash_file
from podium.registry.lineage import adapters_of
from podium.registry.pull import (
    check_free_space,
    fetch_blob,
    leftover_bytes,
    partial_path,
    place,
)
from podium.registry.ref import REPOSITORY_PREFIX, ModelRef, check_name, check_tag
from podium.registry.signature import model_signature
from podium.registry.transport import Transport, raise_for
from podium.registry.trust import check_trust

if TYPE_CHECKING:
    from podium.stack import Stack

MAX_MANIFEST = 4 << 20
ACCEPT = {"Accept": media.OCI_MANIFEST}


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry sent it, with the digest its bytes were checked against."""

    raw: bytes
    digest: str
    content_type: str

    @property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.raw)
        return value


@dataclass(frozen=True)
class ModelTag:
    """One tag (a version or an alias) of a model and the manifest it points at."""

    name: str
    tag: str
    digest: str


@dataclass(frozen=True)
class ModelInfo:
    """What `podium model show` reports about one model version."""

    name: str
    digest: str
    size: int
    format: str
    files: list[dict[str, Any]]
    tags: list[str]  # every tag pointing at this digest
    aliases: list[str]  # those other than the one asked for
    source: str = ""
    trust: dict[str, Any] = field(default_factory=dict)
    # Inputs and outputs read from the model at push time (None: the model has none recorded).
    signature: dict[str, Any] | None = None
    # What a fine-tuned model was made from (None: it was pushed, not trained here).
    lineage: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Blocks:
    """A file that hands http.client 1 MiB blocks instead of the 8 KiB it asks for."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def read(self, _size: int = -1) -> bytes:
        return self._f.read(artifact.CHUNK)


class Registry:
    """One OCI distribution registry holding Podium models as `models/<name>:<version>`.

    address: HOST:PORT of the registry.
    insecure: talk plain HTTP (a lab registry on 127.0.0.1); otherwise HTTPS.
    ca: CA bundle that signed the registry's certificate (Podium's own CA).
    user, password: an htpasswd account, sent as Basic auth.

    Example::

        reg = Registry("127.0.0.1:5000", insecure=True)
        digest = reg.push(Path("tiny.gguf"), "tiny", "v1")
        reg.tag(ModelRef.parse("tiny:v1"), "stable")
        reg.pull(ModelRef.parse(f"tiny@{digest}"), Path("/var/cache/podium/tiny"))
    """

    def __init__(
        self,
        address: str,
        *,
        insecure: bool = False,
        ca: str | Path | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.http = Transport(address, insecure=insecure, ca=ca, user=user, password=password)
        self.address = address

    @classmethod
    def from_env(
        cls, address: str, *, insecure: bool = False, ca: str | Path | None = None
    ) -> Registry:
        """Credentials from PODIUM_REGISTRY_USER / PODIUM_REGISTRY_PASSWORD when set."""
        return cls(
            address,
            insecure=insecure,
            ca=ca,
            user=os.environ.get("PODIUM_REGISTRY_USER") or None,
            password=os.environ.get("PODIUM_REGISTRY_PASSWORD"),
        )

    @classmethod
    def for_stack(cls, stack: Stack, *, ca: str | Path | None = None) -> Registry:
        """The registry a stack declares: its node's address, its port, TLS unless tls: false."""
        if stack.registry is None:
            raise InvalidInput(
                f"stack {stack.name!r} declares no registry; add a `registry:` section "
                "or pass --registry HOST:PORT"
            )
        node = stack.node(stack.registry.node)
        return cls.from_env(
            f"{node.address}:{stack.registry.port}", insecure=not stack.registry.tls, ca=ca
        )

    # -- push ---------------------------------------------------------------------------------

    def push(
        self,
        path: Path | str,
        name: str,
        version: str,
        fmt: str | None = None,
        trusted: bool = False,
        trusted_types: Sequence[str] = (),
        *,
        source: str | None = None,
        progress: Progress | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> str:
        """Push a model file or directory as `models/<name>:<version>`; returns the manifest digest.

        Pushing the same files again is a no-op with the same digest; pushing different files
        under an existing version is refused, since engines may already run that version.
        """
        path = artifact.model_path(path)
        ref = ModelRef(check_name(name), tag=check_tag(version))
        files = artifact.relative_files(path)
        model_format = media.check_format(fmt) if fmt else media.guess_format(path, files)
        trust = check_trust(path, files, model_format, trusted=trusted, trusted_types=trusted_types)
        described = artifact.describe(path, files, model_format, progress)
        config = artifact.model_config(
            name, version, model_format, described, source or path.name, trust,
            model_signature(path, files, model_format, trust), lineage,
        )
        manifest = artifact.model_manifest(name, version, model_format, config, described)
        digest = "sha256:" + artifact.sha256_hex(manifest)
        if self._already_there(ref, digest):
            return digest
        container = self.http.get_container(f"{self.address}/{ref.repository}:{version}")
        for f in described:
            self._upload_file(container, path if path.is_file() else path / f.path, f)
        self._upload_bytes(container, config)
        self._put_manifest(ref.repository, version, manifest, media.OCI_MANIFEST, digest)
        return digest

    def push_layout(self, layout: Path, name: str, version: str) -> str:
        """Push an OCI image layout (a bundle's `models/<name>/<version>/`) as
        `models/<name>:<version>` with the exact bytes it holds; returns the manifest digest.

        Every blob is checked against its name before it leaves, so a damaged bundle is refused
        here rather than served."""
        ref = ModelRef(check_name(name), tag=check_tag(version))
        index = json.loads((layout / "index.json").read_text())
        digest = str(index["manifests"][0]["digest"])
        blobs = layout / "blobs" / "sha256"
        raw = (blobs / digest.removeprefix("sha256:")).read_bytes()
        if "sha256:" + artifact.sha256_hex(raw) != digest:
            raise InvalidInput(f"{layout}: the manifest of {name}:{version} does not hash to {digest}")
        if self._already_there(ref, digest):
            return digest
        manifest = json.loads(raw)
        container = self.http.get_container(f"{self.address}/{ref.repository}:{version}")
        for layer in [manifest["config"], *manifest["layers"]]:
            path = blobs / layer["digest"].removeprefix("sha256:")
            if "sha256:" + hash_file(path)[0] != layer["digest"]:
                raise InvalidInput(f"{path}: its bytes do not hash to its name; rebuild the bundle")
            if not self.http.blob_exists(layer, container):
                with path.open("rb") as body:
                    self._upload(container, _Blocks(body), layer["digest"], layer["size"], path.name)
        self._put_manifest(ref.repository, version, raw, manifest["mediaType"], digest)
        return digest

    def _already_there(self, ref: ModelRef, digest: str) -> bool:
        """True when the version holds exactly `digest`; refused when it holds other files."""
        existing = self._head_digest(ref)
        if existing is not None and existing != digest:
            raise InvalidInput(
                f"version {ref.tag!r} of model {ref.name!r} already exists with other files "
                f"({existing}); push under a new version, or `podium model rm {ref}` first"
            )
        return existing == digest

    def _upload_file(self, container: Any, path: Path, f: artifact.ModelFile) -> None:
        layer = {"digest": f.digest, "size": f.size, "mediaType": f.media_type}
        if self.http.blob_exists(layer, container):
            return
        # One streamed PUT instead of oras' upload_blob: its monolithic path reads the whole
        # file into memory (models run to tens of GiB) and its chunked path (one PATCH per
        # chunk) measured 1.5x slower than this against docker-registry.
        with path.open("rb") as body:
            self._upload(container, _Blocks(body), f.digest, f.size, f.path)

    def _upload(self, container: Any, body: Any, digest: str, size: int, what: str) -> None:
        start = self.http.do_request(
            f"{self.http.prefix}://{container.upload_blob_url()}",
            "POST",
            headers={"Content-Length": "0"},
        )
        raise_for(start, f"starting the upload of {what!r}")
        location = urljoin(self.http.base, start.headers["Location"])
        sep = "&" if "?" in location else "?"
        response = self.http.do_request(
            f"{location}{sep}digest={digest}",
            "PUT",
            data=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        raise_for(response, f"upload of {what!r}")

    def _upload_bytes(self, container: Any, data: bytes) -> None:
        digest = "sha256:" + artifact.sha256_hex(data)
        layer = {"digest": digest, "size": len(data), "mediaType": media.CONFIG_MEDIA_TYPE}
        if not self.http.blob_exists(layer, container):
            self._upload(container, data, digest, len(data), "the model config")

    def _put_manifest(
        self, repository: str, tag: str, raw: bytes, content_type: str, digest: str
    ) -> None:
        # The manifest goes up as exact bytes (oras would re-serialise a dict), so the digest
        # computed here is the one the registry stores and every tag shares.
        response = self.http.do_request(
            self.http.v2(f"{repository}/manifests/{tag}"),
            "PUT",
            data=raw,
            headers={"Content-Type": content_type},
        )
        raise_for(response, f"storing the manifest of {repository}:{tag}")
        stored = response.headers.get("Docker-Content-Digest", digest)
        if stored != digest:
            raise PodiumError(
                f"the registry stored the manifest of {repository}:{tag} as {stored}, not {digest}"
            )

    # -- read ---------------------------------------------------------------------------------

    def _head_digest(self, ref: ModelRef) -> str | None:
        url = self.http.v2(f"{ref.repository}/manifests/{ref.reference}")
        response = self.http.do_request(url, "HEAD", headers=dict(ACCEPT))
        if response.status_code == 404:
            return None
        raise_for(response, f"looking up {ref}")
        value = response.headers.get("Docker-Content-Digest")
        return str(value) if value else None

    def manifest(self, ref: ModelRef) -> Manifest:
        """The manifest of a model version, refused unless its bytes hash to the expected digest."""
        url = self.http.v2(f"{ref.repository}/manifests/{ref.reference}")
        with self.http.do_request(url, "GET", headers=dict(ACCEPT), stream=True) as response:
            if response.status_code == 404:
                raise InvalidInput(
                    f"model {ref} is not in the registry at {self.address}; "
                    f"`podium model ls {ref.name}` lists its versions"
                )
            raise_for(response, f"fetching the manifest of {ref}")
            raw = response.raw.read(MAX_MANIFEST + 1, decode_content=True)
            claimed = response.headers.get("Docker-Content-Digest")
            content_type = response.headers.get("Content-Type", media.OCI_MANIFEST)
        if len(raw) > MAX_MANIFEST:
            raise InvalidInput(f"the manifest of {ref} is larger than 4 MiB; refusing it")
        digest = "sha256:" + artifact.sha256_hex(raw)
        expected = ref.digest or claimed or digest
        if digest != expected:
            raise InvalidInput(
                f"the manifest of model {ref} does not match its digest {expected} "
                f"(its bytes hash to {digest}); refusing the model — push it again"
            )
        return Manifest(raw, digest, content_type)

    def resolve(self, ref: ModelRef) -> str:
        """The manifest digest a version or alias points at now (pin engines to it)."""
        return self.manifest(ref).digest

    def config(self, ref: ModelRef, manifest: Manifest | None = None) -> dict[str, Any]:
        """The model's config blob (format, files, source, trust), checked against its digest."""
        manifest = manifest or self.manifest(ref)
        desc = manifest.data.get("config") or {}
        if desc.get("mediaType") != media.CONFIG_MEDIA_TYPE:
            raise InvalidInput(
                f"{ref} is not a Podium model (its config is {desc.get('mediaType')!r}, "
                f"not {media.CONFIG_MEDIA_TYPE}); push it with `podium model push`"
            )
        url = self.http.v2(f"{ref.repository}/blobs/{desc['digest']}")
        with self.http.do_request(url, "GET", stream=True) as response:
            raise_for(response, f"fetching the config of {ref}")
            raw = response.raw.read(MAX_MANIFEST + 1, decode_content=True)
        if "sha256:" + artifact.sha256_hex(raw) != desc["digest"]:
            raise InvalidInput(
                f"the config of model {ref} does not match its digest {desc['digest']}; "
                "refusing the model — push it again"
            )
        value: dict[str, Any] = json.loads(raw)
        return value

    def _paged(self, path: str, key: str) -> Iterator[str]:
        """Follow the registry's Link headers through a paginated list (catalog, tags)."""
        url: str | None = self.http.v2(path)
        while url:
            response = self.http.do_request(url, "GET")
            if response.status_code == 404:
                return
            raise_for(response, f"listing {path}")
            yield from response.json().get(key) or []
            link = response.links.get("next", {}).get("url")
            url = urljoin(self.http.base, link) if link else None

    def tags(self, name: str) -> list[ModelTag]:
        """Every tag of a model with the digest it points at."""
        out = []
        for tag in self._paged(f"{REPOSITORY_PREFIX}{check_name(name)}/tags/list?n=1000", "tags"):
            digest = self._head_digest(ModelRef(name, tag=tag))
            if digest:
                out.append(ModelTag(name, tag, digest))
        return sorted(out, key=lambda t: t.tag)

    def ls(self, name: str | None = None) -> list[ModelTag]:
        """All models and their tags (or one model's), from /v2/_catalog and each tags list."""
        if name is not None:
            tags = self.tags(name)
            if not tags:
                raise InvalidInput(f"no model named {name!r} in the registry at {self.address}")
            return tags
        names = [
            repo[len(REPOSITORY_PREFIX) :]
            for repo in self._paged("_catalog?n=1000", "repositories")
            if repo.startswith(REPOSITORY_PREFIX)
        ]
        return [t for n in sorted(names) for t in self.tags(n)]

    def show(self, ref: ModelRef) -> ModelInfo:
        """Digest, size, format, files and aliases of one model version."""
        manifest = self.manifest(ref)
        config = self.config(ref, manifest)
        tags = [t.tag for t in self.tags(ref.name) if t.digest == manifest.digest]
        files = config.get("files", [])
        return ModelInfo(
            name=ref.name,
            digest=manifest.digest,
            size=sum(int(f["size"]) for f in files),
            format=str(config.get("format", "")),
            files=files,
            tags=tags,
            aliases=[t for t in tags if t != ref.tag],
            source=str(config.get("source", "")),
            trust=config.get("trust", {}),
            signature=config.get("signature"),
            lineage=config.get("lineage"),
        )

    # -- change -------------------------------------------------------------------------------

    def tag(self, ref: ModelRef, alias: str) -> str:
        """Point `alias` (stable, canary, ...) at the manifest `ref` names; returns its digest."""
        check_tag(alias, "alias")
        manifest = self.manifest(ref)
        self._put_manifest(
            ref.repository, alias, manifest.raw, manifest.content_type, manifest.digest
        )
        return manifest.digest

    def rm(self, ref: ModelRef) -> tuple[str, list[str]]:
        """Delete a model version by digest; every tag pointing at it goes with it.

        Returns the digest and the tags removed. Blobs stay on the registry's disk until its
        garbage collector runs (`docker-registry garbage-collect`).
        """
        digest = self.resolve(ref)
        tags = [t.tag for t in self.tags(ref.name) if t.digest == digest]
        if adapters := adapters_of(self, digest):
            raise InvalidInput(
                f"{ref} ({digest}) is the base of {', '.join(adapters)}; remove "
                f"{'those' if len(adapters) > 1 else 'it'} first (podium model rm {adapters[0]})"
            )
        response = self.http.do_request(
            self.http.v2(f"{ref.repository}/manifests/{digest}"), "DELETE"
        )
        if response.status_code == 405:
            raise PodiumError(
                f"the registry at {self.address} does not allow deletes; set "
                "storage.delete.enabled: true in its config.yml"
            )
        raise_for(response, f"deleting {ref}")
        return digest, tags

    # -- pull ---------------------------------------------------------------------------------

    def pull(self, ref: ModelRef, dest: Path, progress: Progress | None = None) -> Path:
        """Fetch a model's files into `dest` in their original relative paths; returns `dest`.

        Every blob is checked against its digest as it streams into a temp file in `dest`;
        only when all of them are intact are they renamed into place. Free space for all of
        them is checked first. A transfer cut off midway is resumed within the pull; a pull
        that fails removes its temp files, and one killed outright (no chance to clean up)
        is resumed from them by the next pull.
        """
        manifest = self.manifest(ref)
        config = self.config(ref, manifest)
        layers = artifact.manifest_layers(manifest.data)
        promised = {f["path"]: f["sha256"] for f in config.get("files", [])}
        for layer in layers:
            if promised.get(layer.path) != layer.sha256:
                raise InvalidInput(
                    f"model {ref}: file {layer.path!r} has digest {layer.digest} in the manifest "
                    "but not in the model's config; refusing the model — push it again"
                )
        dest = Path(dest)
        sizes = {layer.sha256: layer.size for layer in layers}
        # Each blob once (less what an interrupted pull left), plus a copy per extra path.
        needed = sum(size - leftover_bytes(partial_path(dest, sha), size) for sha, size in sizes.items())
        needed += sum(layer.size for layer in layers) - sum(sizes.values())
        check_free_space(dest, needed, f"model {ref}")
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        temps = [partial_path(dest, sha) for sha in sizes]
        temps += [partial_path(dest, sha + "-copy") for sha in sizes]
        try:
            self._fetch_and_place(ref, layers, dest, progress)
        except BaseException:
            # Whatever stopped the pull, the folder keeps no temp files: a later pull starts
            # clean, and nobody finds a stray .partial beside the model.
            for temp in temps:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
            if created:
                with contextlib.suppress(OSError):
                    dest.rmdir()  # only when nothing else landed in it
            raise
        return dest

    def _fetch_and_place(
        self,
        ref: ModelRef,
        layers: list[artifact.ModelFile],
        dest: Path,
        progress: Progress | None,
    ) -> None:
        """Fetch each distinct blob once, then give every path its file (copies for repeats)."""
        fetched: dict[str, Path] = {}
        for layer in layers:
            if layer.sha256 in fetched:
                continue
            url = self.http.v2(f"{ref.repository}/blobs/{layer.digest}")

            def get(headers: dict[str, str], url: str = url) -> Any:
                return self.http.do_request(url, "GET", headers=headers, stream=True)

            partial = partial_path(dest, layer.sha256)
            fetched[layer.sha256] = fetch_blob(
                get, layer.sha256, layer.size, partial, layer.path, progress
            ).path
        placed: dict[str, Path] = {}
        for layer in layers:
            final = dest / layer.path
            if layer.sha256 in placed:
                # Two files with the same bytes share one blob: copy the first one placed.
                copy = partial_path(dest, layer.sha256 + "-copy")
                shutil.copyfile(placed[layer.sha256], copy)
                with copy.open("rb+") as fh:
                    os.fsync(fh.fileno())
                place(copy, final)
            else:
                place(fetched[layer.sha256], final)
                placed[layer.sha256] = final
