#!/usr/bin/python3
"""Pull one model by digest from Podium's registry into a node's model cache, every byte checked.

It runs on bare nodes with nothing but the system python3, so it imports only the
standard library (engine roles ship this file as /usr/local/sbin/podium-model-pull).
The manifest is fetched by digest and its bytes must hash to that digest; each layer
then streams into a hidden folder beside the cache and must hash to the digest the
manifest gives it; only a complete, verified folder is renamed to
<root>/<digest>, so an engine never sees half a model. Files of a pull that was cut
off are kept and checked again on the next run.

    podium-model-pull --registry https://10.0.0.10:5000 --repository models/tiny \\
        --digest sha256:<64 hex> --ca /etc/podium/model-pull/ca.pem \\
        --auth-file /etc/podium/model-pull/pull.auth --link /var/lib/podium/models/sha256:<hex>.gguf

Exit status: 0 when the model is in place, 2 for bad arguments, 1 for anything else,
with one sentence on stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TITLE = "org.opencontainers.image.title"
FORMAT = "vnd.podium.model.format"
MAX_MANIFEST = 4 << 20
CHUNK = 1 << 20
TIMEOUT_S = 60


class PullError(Exception):
    """A pull that cannot finish; the message is one sentence for the operator (exit 1)."""

    exit_code = 1


class BadArguments(PullError):
    exit_code = 2


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: the credential belongs to this triple, not to any URL."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class CredentialRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a registry's redirects, but keep its credential with the registry.

    Registries that keep blobs in an object store (S3, GCS, Azure, MinIO) answer a blob GET
    with a redirect to a pre-signed URL on another host: the signature in the URL is the
    credential there, and the store refuses a request that carries a second one. So a
    redirect to another scheme, host or port is followed without the Authorization header
    (urllib would send it along), and one from HTTPS down to plain HTTP is refused.
    """

    max_redirections = 5

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        old, new = origin(req.full_url), origin(newurl)
        if old[0] == "https" and new[0] != "https":
            raise PullError(
                f"the registry redirected {urllib.parse.urlsplit(req.full_url).path} to "
                f"{new[0]}://{new[1]}, away from HTTPS; refusing it - serve blobs over HTTPS"
            )
        follow = super().redirect_request(req, fp, code, msg, headers, newurl)
        if follow is not None and new != old:
            follow.remove_header("Authorization")
        return follow


class RegistryClient:
    """GETs against one registry with its CA and an optional Basic credential."""

    def __init__(self, url: str, ca: Path | None, auth: str | None) -> None:
        if not re.match(r"^https?://[^/\s]+$", url):
            raise BadArguments(f"--registry {url!r} must be http(s)://HOST:PORT with no path")
        self.url = url
        self.context = ssl.create_default_context(cafile=str(ca) if ca else None)
        self.headers: dict[str, str] = {}
        if auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        self.opener = urllib.request.build_opener(
            CredentialRedirects(), urllib.request.HTTPSHandler(context=self.context)
        )

    @contextlib.contextmanager
    def get(self, path: str, accept: str | None = None) -> Iterator[Any]:
        headers = dict(self.headers)
        if accept:
            headers["Accept"] = accept
        request = urllib.request.Request(f"{self.url}/v2/{path}", headers=headers)
        try:
            with self.opener.open(request, timeout=TIMEOUT_S) as response:
                yield response
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise PullError(
                    f"the registry at {self.url} refused the pull credential (HTTP 401); "
                    "re-run the engine role so it writes the stack's current credential"
                ) from None
            if exc.code == 404:
                raise PullError(
                    f"the registry at {self.url} has no {path} (HTTP 404); push the model again"
                ) from None
            raise PullError(f"the registry at {self.url} answered HTTP {exc.code} for {path}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise PullError(
                    f"TLS check of the registry at {self.url} failed ({reason}); "
                    "give --ca the CA that signed its certificate"
                ) from None
            raise PullError(f"cannot reach the registry at {self.url} ({reason})") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def safe_relpath(title: str) -> str:
    """A layer's file name, refused when it would land outside the model's folder."""
    rel = PurePosixPath(title)
    if not title or rel.is_absolute() or ".." in rel.parts or "\\" in title or "\0" in title:
        raise PullError(f"the manifest names a file {title!r} outside the model's folder; refusing it")
    return rel.as_posix()


def fetch_manifest(client: RegistryClient, repository: str, digest: str) -> dict[str, Any]:
    """The manifest stored under `digest`, refused unless its bytes hash to that digest."""
    with client.get(f"{repository}/manifests/{digest}", accept=OCI_MANIFEST) as response:
        raw = response.read(MAX_MANIFEST + 1)
    if len(raw) > MAX_MANIFEST:
        raise PullError(f"the manifest {digest} is larger than {MAX_MANIFEST} bytes; refusing it")
    actual = "sha256:" + hashlib.sha256(raw).hexdigest()
    if actual != digest:
        raise PullError(f"the registry sent a manifest hashing to {actual} for {digest}; refusing it")
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise PullError(f"the manifest {digest} is not JSON; push the model again") from None
    return manifest


def layers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each file of the model: path, digest, size and media type, checked before anything is written."""
    out = []
    seen: set[str] = set()
    for layer in manifest.get("layers") or []:
        digest = str(layer.get("digest", ""))
        if not DIGEST.match(digest):
            raise PullError(f"a layer has digest {digest!r}; only sha256 digests are accepted")
        path = safe_relpath(str((layer.get("annotations") or {}).get(TITLE, "")))
        if path in seen:
            raise PullError(f"the manifest lists file {path!r} twice; push the model again")
        seen.add(path)
        out.append({"path": path, "digest": digest, "size": int(layer["size"]),
                    "media_type": str(layer.get("mediaType", ""))})
    if not out:
        raise PullError("the manifest lists no files; push the model again")
    return out


def weights_file(manifest: dict[str, Any], files: list[dict[str, Any]]) -> str:
    """The one file holding the weights (its media type names the model's format)."""
    fmt = (manifest.get("annotations") or {}).get(FORMAT, "")
    wanted = f"application/vnd.podium.model.{fmt}"
    found = [f["path"] for f in files if fmt and f["media_type"] == wanted]
    if len(found) != 1:
        raise PullError(
            f"--link needs a model with exactly one {fmt or 'weights'} file; this one has {len(found)}"
        )
    return str(found[0])


def download(client: RegistryClient, repository: str, layer: dict[str, Any], dest: Path) -> None:
    """Stream one blob to `dest`, refusing it unless its size and sha256 match the manifest."""
    complete = dest.is_file() and dest.stat().st_size == layer["size"]
    if complete and "sha256:" + sha256_file(dest) == layer["digest"]:
        return  # left complete by an earlier pull that was cut off later
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    total = 0
    with client.get(f"{repository}/blobs/{layer['digest']}") as response, part.open("wb") as f:
        while chunk := response.read(CHUNK):
            total += len(chunk)
            if total > layer["size"]:
                break  # too long already: it cannot match, and the disk is not ours to fill
            h.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    actual = "sha256:" + h.hexdigest()
    if total != layer["size"] or actual != layer["digest"]:
        part.unlink()
        raise PullError(
            f"file {layer['path']!r} from the registry does not match its digest {layer['digest']} "
            f"({total} bytes, {actual}); refusing the model - push it again"
        )
    os.replace(part, dest)


def check_free_space(root: Path, files: list[dict[str, Any]], work: Path, what: str) -> None:
    """Refuse a pull the disk under `root` cannot hold, before a byte is written.

    A disk filled midway stops the engines, logs and journal that share it, not only the pull.
    """
    needed = 0
    for layer in files:
        path = work / layer["path"]
        have = path.stat().st_size if path.is_file() else 0  # left by an interrupted pull
        needed += max(layer["size"] - have, 0)
    free = shutil.disk_usage(root).free
    if needed > free:
        raise PullError(
            f"{root} has {free} bytes free but {what} needs {needed} bytes; "
            "free space there or give --root on a larger disk"
        )


def replace_link(link: Path, target: Path) -> bool:
    """Point `link` at `target` atomically; False when it already did."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return False
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pull(client: RegistryClient, repository: str, digest: str, root: Path,
         link: Path | None = None) -> str:
    """Bring <root>/<digest> into place (and `link` to its weights file); returns what was done."""
    if not DIGEST.match(digest):
        raise BadArguments(f"--digest {digest!r} is not sha256:<64 hex digits>")
    if not REPOSITORY.match(repository):
        raise BadArguments(f"--repository {repository!r} is not a registry repository like models/tiny")
    root.mkdir(parents=True, exist_ok=True)
    final = root / digest
    with _locked(root / f".{digest}.lock"):
        done = "present"
        if not final.is_dir():
            manifest = fetch_manifest(client, repository, digest)
            files = layers(manifest)
            work = root / f".{digest}.pulling"
            check_free_space(root, files, work, f"{repository}@{digest}")
            work.mkdir(exist_ok=True)
            for layer in files:
                download(client, repository, layer, work / layer["path"])
            _fsync_dir(work)
            os.rename(work, final)
            _fsync_dir(root)
            done = f"pulled {len(files)} files"
        linked = link is not None and link.is_symlink() and Path(os.readlink(link)).parent == final
        if link is not None and not (linked and link.exists()):
            manifest = fetch_manifest(client, repository, digest)
            target = final / weights_file(manifest, layers(manifest))
            if replace_link(link, target):
                done += f", linked {link}"
    return done


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One pull of a digest at a time on a node: two engines may want the same model."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_auth(path: Path | None) -> str | None:
    """`user:password` from a 0600 file, so the secret never appears on a command line."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BadArguments(f"--auth-file {path}: {exc.strerror}") from None
    if ":" not in text:
        raise BadArguments(f"--auth-file {path} must hold one line user:password")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podium-model-pull", description=__doc__.split("\n")[0])
    parser.add_argument("--registry", required=True, help="https://HOST:PORT of the registry")
    parser.add_argument("--repository", required=True, help="e.g. models/tiny-llama")
    parser.add_argument("--digest", required=True, help="sha256:<hex> of the model's manifest")
    parser.add_argument("--root", type=Path, default=Path("/var/lib/podium/models"))
    parser.add_argument("--ca", type=Path, help="CA bundle that signed the registry's certificate")
    parser.add_argument("--auth-file", type=Path, help="file holding user:password")
    parser.add_argument("--link", type=Path, help="symlink to point at the model's weights file")
    args = parser.parse_args(argv)
    try:
        client = RegistryClient(args.registry, args.ca, read_auth(args.auth_file))
        done = pull(client, args.repository, args.digest, args.root, args.link)
    except PullError as exc:
        print(f"podium-model-pull: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"podium-model-pull: {exc.strerror or exc} ({exc.filename or 'network'})", file=sys.stderr)
        return 1
    print(f"{args.repository}@{args.digest}: {done} ({args.root / args.digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
