"""Role network, proved on each host: VLANs exist with their id, MTU and address, and jumbo
frames cross them unfragmented to every peer on the same VLAN."""


def test_010_vlans_exist_with_id_and_mtu(host, settings):
    for vlan in settings["vlans"]:
        link = host.check_output(f"ip -d link show {vlan['name']}")
        assert f"vlan protocol 802.1Q id {vlan['id']}" in link, link
        assert f"mtu {vlan['mtu']}" in link, link


def test_020_vlan_addresses(host, settings):
    for vlan in settings["vlans"]:
        addresses = host.check_output(f"ip -o -4 addr show dev {vlan['name']}")
        assert f"inet {vlan['address']}" in addresses, addresses


def test_030_node_keeps_its_own_address(host, settings):
    parent = settings.get("parent_address")
    if parent:
        # An interface the stack left unset is whichever holds the address.
        device = f" dev {parent['interface']}" if parent["interface"] else ""
        addresses = host.check_output(f"ip -o -4 addr show{device}")
        assert f"inet {parent['address']}" in addresses, addresses
        assert host.run(f"ip route show default | grep -q 'via {parent['gateway']}'").rc == 0


def test_040_jumbo_frames_reach_vlan_peers(host, settings, node, stack):
    for vlan in settings["vlans"]:
        declared = next(v for v in stack.network.vlans if v.name == vlan["name"])
        hosts = list(declared.subnet.hosts())
        for index, peer in enumerate(declared.nodes):
            if peer == host.check_output("hostname"):
                continue
            payload = vlan["mtu"] - 28  # IPv4 and ICMP headers
            address = hosts[index]
            result = host.run(f"ping -c 1 -W 2 -M do -s {payload} {address}")
            assert result.rc == 0, (
                f"{vlan['mtu']}-byte frames do not reach {peer} ({address}) on {vlan['name']}"
            )


def test_050_bridges_exist_with_mtu(host, settings):
    for bridge in settings["bridges"]:
        link = host.check_output(f"ip -d link show {bridge['name']}")
        assert "bridge" in link, link
        assert f"mtu {bridge['mtu']}" in link, link
