"""The HTTP trigger's NetworkPolicy, evaluated as a network plugin would for a connection
to the trigger pod: from the release's namespace on the trigger's port by default, from the
peers networkPolicy.triggerFrom lists once set, and never on another port."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from .render import NAMESPACE, Case, Rendered, render

pytestmark = pytest.mark.bundle

TRIGGER = (
    ("job", None),
    ("trigger.enabled", True),
    ("trigger.tokenSecret.name", "trigger-token"),
)
OTHER_NAMESPACE = {"kubernetes.io/metadata.name": "elsewhere"}
OWN_NAMESPACE = {"kubernetes.io/metadata.name": NAMESPACE}


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # what the chart writes
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_admits(peer: dict[str, Any], pod: dict[str, str], namespace: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False  # these tests connect from pods
    in_namespace = (
        _matches(peer["namespaceSelector"], namespace)
        if "namespaceSelector" in peer
        else namespace == OWN_NAMESPACE
    )
    return in_namespace and _matches(peer.get("podSelector", {}), pod)


def reaches(
    rendered: Rendered,
    target: dict[str, str],
    port: int,
    pod: dict[str, str],
    namespace: dict[str, str],
) -> bool:
    """Whether a pod (labels, namespace labels) may open `port` on the pod labelled `target`."""
    policies = [
        p["spec"]
        for p in rendered.of_kind("NetworkPolicy")
        if _matches(p["spec"]["podSelector"], target) and "Ingress" in p["spec"]["policyTypes"]
    ]
    if not policies:
        return True  # not isolated
    for spec in policies:
        for rule in spec.get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            if any(_peer_admits(peer, pod, namespace) for peer in rule.get("from", [])):
                return True
    return False


def trigger_pod(rendered: Rendered) -> tuple[dict[str, str], int]:
    (deployment,) = rendered.of_kind("Deployment")
    template = deployment["spec"]["template"]
    (port,) = template["spec"]["containers"][0]["ports"]
    return template["metadata"]["labels"], port["containerPort"]


@pytest.mark.parametrize("operator", [True, False])
def test_only_the_namespace_reaches_the_trigger_by_default(helm: str, operator: bool) -> None:
    rendered = render(helm, "jobs", Case("chat.yaml", (*TRIGGER, ("operator.enabled", operator))))
    labels, port = trigger_pod(rendered)
    for policy in rendered.of_kind("NetworkPolicy"):
        kubernetes_validate.validate(policy, "1.33", strict=True)
    anyone = {"app": "anything"}
    assert reaches(rendered, labels, port, anyone, OWN_NAMESPACE)
    assert not reaches(rendered, labels, port, anyone, OTHER_NAMESPACE)
    assert not reaches(rendered, labels, port + 1, anyone, OWN_NAMESPACE)


def test_trigger_from_lists_who_else_may_reach_it(helm: str) -> None:
    ci = {"namespaceSelector": {"matchLabels": {"team": "ci"}},
          "podSelector": {"matchLabels": {"app": "runner"}}}  # fmt: skip
    rendered = render(
        helm, "jobs", Case("chat.yaml", (*TRIGGER, ("networkPolicy.triggerFrom", [ci])))
    )
    labels, port = trigger_pod(rendered)
    runner, ci_namespace = {"app": "runner"}, {"team": "ci"}
    assert reaches(rendered, labels, port, runner, ci_namespace)
    assert not reaches(rendered, labels, port, {"app": "other"}, ci_namespace)
    assert not reaches(rendered, labels, port, runner, OWN_NAMESPACE)


def test_no_trigger_policy_without_network_policies(helm: str) -> None:
    off = Case("chat.yaml", (*TRIGGER, ("networkPolicy.enabled", False)))
    assert render(helm, "jobs", off).of_kind("NetworkPolicy") == []
