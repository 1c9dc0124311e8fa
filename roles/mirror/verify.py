"""Role mirror, proved on the bundle's node: the node holds the bundle the control machine has,
and nginx serves its signed apt index over TLS that the stack CA vouches for."""

from podium.bundle.manifest import MANIFEST, file_sha256


def test_010_the_node_holds_the_control_machines_bundle(host, settings):
    remote = host.check_output(f"sha256sum {settings['root']}/{MANIFEST} | cut -d' ' -f1")
    assert remote == settings["bundle_digest"], "the bundle on the node is not the one `podium up` shipped"


def test_020_nginx_serves_the_signed_index_over_the_stacks_tls(host, settings, stack):
    assert host.service("nginx").is_running, "nginx is not running"
    url = f"https://{settings['address']}:{settings['port']}/apt/dists/bookworm/InRelease"
    served = host.check_output(f"curl -fsS --cacert {settings['ca']} {url} | sha256sum | cut -d' ' -f1")
    expected = file_sha256(stack.bundle_folder / "apt" / "dists" / "bookworm" / "InRelease")
    assert served == expected, f"GET {url} did not answer the bundle's InRelease"
