"""Egress of the release's pods (networkPolicy.egress, issue 27), evaluated as a network
plugin would for a connection a pod opens: DNS for every pod; the API server only for the
driver, spark-submit and the trigger (executors carry no token and need none); the driver
and executors each other; the lake (`egress.to`) only the driver and executors; nothing
else, so a posted spec cannot have a job pod send a Secret to a host of its choosing."""

from __future__ import annotations

import ipaddress
from typing import Any

import kubernetes_validate
import pytest

from .render import CHART, NAMESPACE, Case, Rendered, render, run_helm

pytestmark = pytest.mark.bundle

API_SERVER = "10.0.0.1"
LAKE = "10.9.0.0/16"
EGRESS: tuple[tuple[str, Any], ...] = (
    ("networkPolicy.egress.enabled", True),
    ("networkPolicy.egress.apiServer", [{"ipBlock": {"cidr": f"{API_SERVER}/32"}}]),
    ("networkPolicy.egress.to", [{"to": [{"ipBlock": {"cidr": LAKE}}],
                                  "ports": [{"protocol": "TCP", "port": 443}]}]),
)  # fmt: skip
DNS_POD = ({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
OWN_NAMESPACE = {"kubernetes.io/metadata.name": NAMESPACE}

Target = tuple[dict[str, str], dict[str, str]] | str  # (pod labels, namespace labels) or an IP


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # what the chart writes
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict[str, Any], target: Target) -> bool:
    if isinstance(target, str):
        if "ipBlock" not in peer:
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(target)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if "ipBlock" in peer:
        return False
    pod, namespace = target
    in_namespace = (
        _matches(peer["namespaceSelector"], namespace)
        if "namespaceSelector" in peer
        else namespace == OWN_NAMESPACE
    )
    return in_namespace and _matches(peer.get("podSelector", {}), pod)


def may_connect(rendered: Rendered, source: dict[str, str], target: Target, port: int) -> bool:
    """Whether the pod labelled `source` (in the release's namespace) may open `port` (TCP,
    or UDP for 53) on `target`."""
    policies = [
        p["spec"]
        for p in rendered.of_kind("NetworkPolicy")
        if _matches(p["spec"]["podSelector"], source) and "Egress" in p["spec"]["policyTypes"]
    ]
    if not policies:
        return True  # egress not isolated
    for spec in policies:
        for rule in spec.get("egress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            if any(_peer_admits(peer, target) for peer in rule.get("to", [])):
                return True
    return False


def labels_of(rendered: Rendered, component: str) -> dict[str, str]:
    """The labels the chart's NetworkPolicies select a component's pods by."""
    for policy in rendered.of_kind("NetworkPolicy"):
        selected = policy["spec"]["podSelector"]["matchLabels"]
        if selected.get("app.kubernetes.io/component") == component:
            return dict(selected)
    raise AssertionError(f"no NetworkPolicy selects the {component} pods")


@pytest.mark.parametrize("operator", [True, False])
def test_egress_is_not_limited_by_default(helm: str, operator: bool) -> None:
    rendered = render(helm, "jobs", Case("chat.yaml", (("operator.enabled", operator),)))
    assert rendered.of_kind("NetworkPolicy")
    for policy in rendered.of_kind("NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_egress_without_the_api_server_is_refused_naming_the_value(helm: str) -> None:
    case = Case("chat.yaml", (("networkPolicy.egress.enabled", True),))
    result = run_helm(helm, "template", "t", str(CHART), *case.helm_args())
    assert result.returncode != 0
    assert "networkPolicy.egress.enabled needs networkPolicy.egress.apiServer" in result.stderr


def test_egress_without_network_policies_is_refused_not_ignored(helm: str) -> None:
    case = Case("chat.yaml", (*EGRESS, ("networkPolicy.enabled", False)))
    result = run_helm(helm, "template", "t", str(CHART), *case.helm_args())
    assert result.returncode != 0
    assert "networkPolicy.egress.enabled needs networkPolicy.enabled" in result.stderr


def test_each_pod_reaches_what_it_needs_and_nothing_else(helm: str) -> None:
    rendered = render(helm, "jobs", Case("chat.yaml", (*EGRESS, ("operator.enabled", False))))
    for policy in rendered.of_kind("NetworkPolicy"):
        kubernetes_validate.validate(policy, "1.33", strict=True)
    driver, executor = labels_of(rendered, "driver"), labels_of(rendered, "executor")
    submitter = labels_of(rendered, "submitter")
    lake, elsewhere = "10.9.4.2", "203.0.113.7"
    for pod in (driver, executor, submitter):
        assert may_connect(rendered, pod, DNS_POD, 53)
        assert not may_connect(rendered, pod, elsewhere, 443)
    # The API server: the driver (it creates executors) and spark-submit; not executors.
    assert may_connect(rendered, driver, API_SERVER, 443)
    assert may_connect(rendered, submitter, API_SERVER, 6443)
    assert not may_connect(rendered, executor, API_SERVER, 443)
    # The driver and executors each other, on any port (Spark picks the block managers').
    assert may_connect(rendered, executor, (driver, OWN_NAMESPACE), 7078)
    assert may_connect(rendered, executor, (executor, OWN_NAMESPACE), 40123)
    assert may_connect(rendered, driver, (executor, OWN_NAMESPACE), 40123)
    assert not may_connect(rendered, submitter, (executor, OWN_NAMESPACE), 40123)
    # Another release's pods are not this job's.
    other = {**executor, "app.kubernetes.io/instance": "someone-else"}
    assert not may_connect(rendered, executor, (other, OWN_NAMESPACE), 40123)
    # The lake: the driver and executors, on the ports egress.to names.
    assert may_connect(rendered, executor, lake, 443)
    assert may_connect(rendered, driver, lake, 443)
    assert not may_connect(rendered, executor, lake, 5432)
    assert not may_connect(rendered, submitter, lake, 443)


def test_the_trigger_reaches_only_dns_and_the_api_server(helm: str) -> None:
    case = Case(
        "chat.yaml",
        (
            ("job", None),
            ("trigger.enabled", True),
            ("trigger.tokenSecret.name", "trigger-token"),
            *EGRESS,
        ),
    )
    rendered = render(helm, "jobs", case)
    for policy in rendered.of_kind("NetworkPolicy"):
        kubernetes_validate.validate(policy, "1.33", strict=True)
    trigger = labels_of(rendered, "trigger")
    assert may_connect(rendered, trigger, DNS_POD, 53)
    assert may_connect(rendered, trigger, API_SERVER, 443)
    assert not may_connect(rendered, trigger, "10.9.4.2", 443)
    assert not may_connect(rendered, trigger, "203.0.113.7", 443)
