"""Role mirror, its verbs: deploy, check, remove."""

import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy as pyinfra_deploy
from pyinfra.operations import files, server, systemd

from podium.bundle.artifact_urls import UNPACKED_MARK, unpack_command
from podium.bundle.manifest import MANIFEST
from podium.files import files_for
from podium.pinned import node_versions
from podium.registry.ca import ca_certificate, server_certificate
from roles import checks, nginx
from roles.mirror.defaults import DEFAULTS

# On the node, beside the manifest: the sha256 and path of each slot file it was shipped with.
SLOTS_MARK = ".podium-slots"


@pyinfra_deploy("mirror: deploy", data_defaults=DEFAULTS)
def deploy() -> None:
    settings = host.data.podium_mirror
    stack = host.data.podium_stack
    rendered = files_for("mirror", host.name, settings)
    root, etc, bundle = settings["root"], settings["etc"], host.data.podium_bundle

    # The manifest names every file with its sha256 and the slots mark names the operator's
    # files by theirs: the node's copies tell whether anything changed, so an unchanged bundle
    # costs one command. Both are shipped last, so a ship cut off halfway is taken up again on
    # the next run.
    slots = settings["slots"]
    mark = "".join(f"{s['sha256']} {s['path']}\n" for s in slots)
    held = checks.output(f"sha256sum {root}/{MANIFEST} | cut -d' ' -f1; cat {root}/{SLOTS_MARK}")
    if held == f"{settings['bundle_digest']}\n{mark}".strip():
        host.noop(f"the bundle in {root} is the one on the control machine")
    else:
        kept = [MANIFEST, SLOTS_MARK, ".podium-bundle"]
        files.sync(
            name=f"Ship the bundle to {root} (changed files only)",
            src=bundle,
            dest=root,
            delete=True,
            # pyinfra matches these against whole paths, the control machine's and the node's;
            # the folders tar slots are served as are the node's own.
            exclude=[*(f"{where}/{name}" for where in (Path(bundle), root) for name in kept),
                     *(f"{root}/{s['folder']}/*" for s in slots if s["folder"])],
            add_deploy_dir=False,
        )
        files.put(name="Ship the bundle's manifest", src=f"{bundle}/{MANIFEST}",
                  dest=f"{root}/{MANIFEST}", mode="644")
        files.put(name="Mark the operator's files shipped", src=StringIO(mark), dest=f"{root}/{SLOTS_MARK}",
                  mode="644")
    # A tar of a folder (NVIDIA's repositories) is served unpacked, where roles read inside it.
    for slot in slots:
        if not slot["folder"]:
            continue
        folder = f"{root}/{slot['folder']}"
        if checks.output(f"cat {folder}/{UNPACKED_MARK}") == slot["sha256"]:
            host.noop(f"{slot['path']} is served unpacked as {slot['folder']}")
        else:
            server.shell(name=f"Serve {slot['path']} unpacked as {slot['folder']}",
                         commands=[unpack_command(f"{root}/{slot['path']}", folder, slot["sha256"])])

    # nginx comes from the bundle itself, through a file: source only this one apt run reads:
    # nothing else is reachable, and the node's own sources name the mirror (role base).
    files.directory(name="Mirror folder", path=etc, mode="755")
    files.directory(name="No other sources for the bundle's apt run", path=f"{etc}/sources.d", mode="755")
    files.put(name="The bundle as a file: apt source", src=StringIO(rendered["bundle.list"]),
              dest=f"{etc}/bundle.list", mode="644")
    package = node_versions().pinned("mirror", ["nginx"])[0]
    lists = host.data.mirror_apt_lists
    options = " ".join(
        f"-o {shlex.quote(o)}"
        for o in (f"Dir::Etc::SourceList={etc}/bundle.list", f"Dir::Etc::SourceParts={etc}/sources.d",
                  f"Dir::State::Lists={lists}")
    )
    wanted = package.split("=", 1)[1]
    if checks.output("dpkg-query -W -f='${Version} ${db:Status-Status}' nginx") == f"{wanted} installed":
        host.noop(f"nginx {wanted} is installed")
    else:
        server.shell(
            name=f"Install {package} from the bundle",
            commands=[
                f"mkdir -p {lists}/partial",
                f"apt-get {options} update",
                f"DEBIAN_FRONTEND=noninteractive apt-get {options} install -y --no-install-recommends {package}",
            ],
        )
    files.link(name="No default nginx site", path="/etc/nginx/sites-enabled/default", present=False)

    # The stack CA where every node keeps it for apt (role base writes the same file).
    files.put(name="Stack CA for the mirror", src=str(ca_certificate(stack)), dest=settings["ca"], mode="644")
    cert, key = server_certificate(stack, "mirror", [settings["address"]], settings["server_names"])
    tls = [
        files.put(name="Mirror certificate", src=str(cert), dest=f"{etc}/tls.crt", mode="644"),
        files.put(name="Mirror key", src=str(key), dest=f"{etc}/tls.key", mode="600"),
    ]
    site = files.put(name="nginx serves the bundle", src=StringIO(rendered["podium-mirror.conf"]),
                     dest=host.data.mirror_nginx_site, mode="644")
    nginx.restart_on_change([site, *tls], "site or certificate")


@pyinfra_deploy("mirror: check", data_defaults=DEFAULTS)
def check() -> None:
    settings = host.data.podium_mirror
    url = f"https://{settings['address']}:{settings['port']}/apt/dists/bookworm/InRelease"
    checks.passes(
        name="nginx serves the bundle's signed apt index",
        commands=["systemctl is-active nginx", f"curl -fsS -o /dev/null --cacert {settings['ca']} {url}"],
        proves=f"nginx active, GET {url} answered",
    )


@pyinfra_deploy("mirror: remove", data_defaults=DEFAULTS)
def remove() -> None:
    """Stop serving the bundle; nginx stays, other roles (the registry) may use it."""
    files.file(name="Remove the mirror's nginx site", path=host.data.mirror_nginx_site, present=False)
    systemd.service(name="Reload nginx", service="nginx", reloaded=True)
    files.directory(name="Remove the mirror's TLS files", path=host.data.mirror_etc, present=False)
    files.directory(name="Remove the bundle", path=host.data.mirror_root, present=False)
