"""The DNS name grammar Kubernetes uses for object names (RFC 1123), in one place."""

from __future__ import annotations

import re

# A label: lower-case letters, digits and '-', starting and ending with a letter or digit.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# A subdomain: labels joined by dots, 253 characters at most.
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def is_dns_label(name: str) -> bool:
    """A namespace or service name: an RFC 1123 label of at most 63 characters."""
    return bool(DNS_LABEL.match(name))


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(DNS_SUBDOMAIN.match(name))
