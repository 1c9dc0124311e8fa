"""The gateways' store on real lab machines (a copy of tests/stacks/labstore under a name and
subnet of its own): `podium lab up` lays PostgreSQL down on ctrl and two gateways on ctrl and
node1, and `podium verify` proves its TLS, scram account, pg_hba, firewall and nightly dump. A key
created through one gateway is honoured by the other and its usage is counted once, in the one
store; a second `podium up` changes nothing."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from podium.render import REPO
from tests.fixtures_lab import UniqueStack, podium, remove_stack_state, require_lab_host, unique_stack

pytestmark = pytest.mark.lab

SOURCE = REPO / "tests" / "stacks" / "labstore"


def line(output: str, prefix: str) -> str:
    found = [x.removeprefix(prefix).strip() for x in output.splitlines() if x.startswith(prefix)]
    assert found, f"no line starting {prefix!r} in:\n{output}"
    return found[-1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_lab_host()
    copy: UniqueStack = unique_stack(SOURCE, tmp_path_factory.mktemp("store"))
    folder = str(copy.folder)
    try:
        up = podium("lab", "up", folder)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-5000:]
        yield {"copy": copy, "folder": folder, "up": up}
    finally:
        down = podium("lab", "down", folder, timeout=600)
        if down.returncode == 0:
            remove_stack_state(copy.name)
        assert down.returncode == 0, down.stderr


def test_verify_proves_the_store_and_both_gateways(lab: dict[str, Any]) -> None:
    said = lab["up"].stdout + lab["up"].stderr
    for what in ("✓ verify store on ctrl", "✓ verify gateway on ctrl", "✓ verify gateway on node1"):
        assert what in said, f"{what!r} missing from podium lab up's output"


def test_a_key_made_through_one_gateway_works_on_the_other_and_is_metered_once(lab: dict[str, Any]) -> None:
    up, prefix = lab["up"].stdout, lab["copy"].prefix
    key, ca = line(up, "key: "), line(up, "ca: ")
    # podium lab up prints the gateways' one address (gateway.address).
    assert line(up, "gateway: ") == f"https://{prefix}20:8443/v1", line(up, "gateway: ")
    first, second = f"https://{prefix}10:8443/v1", f"https://{prefix}11:8443/v1"
    trust = ssl.create_default_context(cafile=ca)
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    with httpx.Client(verify=trust, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
        for url in (first, second):
            answer = client.post(f"{url}/chat/completions", json=body)
            assert answer.status_code == 200, f"{url}: {answer.status_code} {answer.text[:300]}"
    usage = podium("usage", lab["folder"], "--by", "key", "--json", timeout=120)
    assert usage.returncode == 0, usage.stderr
    # The key `podium lab up` printed is named lab-<time>; `podium verify`'s own keys are not.
    rows = [r for r in json.loads(usage.stdout) if str(r["key"]).startswith("lab-")]
    assert [r["requests"] for r in rows] == [2], rows


def test_a_second_up_changes_nothing(lab: dict[str, Any]) -> None:
    again = podium("up", lab["folder"], timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().endswith("changes: 0"), again.stdout[-2000:]
