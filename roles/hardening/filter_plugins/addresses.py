"""Address filters of the hardening role.

ufw stores a rule's source in canonical form (host bits cleared, /32 and /128
dropped, IPv6 compressed and lower-cased), so a rule is compared with what
ufw shows only after the same normalisation; otherwise a rule written as
`203.0.113.7/32` is added on one run and deleted as "stray" on the next.
"""
import ipaddress
import re

from ansible.errors import AnsibleFilterError

ANY = "any"


def _network(value, variable):
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as exc:
        raise AnsibleFilterError(f"{variable}: '{value}' is neither `any` nor an IP address or CIDR ({exc})") from exc


def _address(value):
    address = ipaddress.ip_address(str(value).strip().split("%", 1)[0])
    # An IPv4 client seen through an IPv6 socket: ::ffff:203.0.113.7.
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def ufw_source(value, variable="source"):
    """`any`, or the source as ufw stores it: 203.0.113.7, 10.0.0.0/8, 2001:db8::/32."""
    if str(value).strip().lower() == ANY:
        return ANY
    network = _network(value, variable)
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def is_source(value):
    """True for `any`, an IP address or a CIDR (host bits may be set)."""
    try:
        ufw_source(value)
    except AnsibleFilterError:
        return False
    return True


def source_covers(source, address):
    """True when the source (`any`, an address or a CIDR) contains the address."""
    if str(source).strip().lower() == ANY:
        return True
    try:
        return _address(address) in _network(source, "source")
    except ValueError:
        return False


_RULE = re.compile(
    r"^ufw (?:allow|limit) (?:(?P<port>\d+)/tcp|from (?P<src>\S+) to any port (?P<sport>\d+) proto tcp)\b"
)


def sources_covering(sources, address):
    """The sources (`any`, addresses, CIDRs) that contain the address."""
    return [source for source in sources if source_covers(source, address)]


def _rule_carries(line, address, port):
    match = _RULE.match(str(line))
    if not match or not address:
        return False
    rule_port = match.group("port") or match.group("sport")
    return int(rule_port) == int(port) and source_covers(match.group("src") or ANY, address)


def ufw_rules_carrying(lines, address, port):
    """The `ufw show added` lines that let `address` reach TCP `port`.

    Used to keep, whatever the allow-list says, the rule that carries the
    controller's own SSH connection.
    """
    return [line for line in lines if _rule_carries(line, address, port)]


class FilterModule:
    def filters(self):
        return {
            "hardening_ufw_source": ufw_source,
            "hardening_is_source": is_source,
            "hardening_sources_covering": sources_covering,
            "hardening_ufw_rules_carrying": ufw_rules_carrying,
        }
