"""The driver's Role, evaluated as the API server's RBAC authorizer would (`kubectl auth
can-i` for the driver's ServiceAccount), pinned both ways: what Spark 4.2's driver and
spark-submit call is allowed, what would let a driver token take over the namespace is not.

What Spark calls was read from spark-kubernetes 4.2's classes (fabric8 `create`, `get`,
`list`, `watch`, `delete`, label deletes; `serverSideApply` in spark-submit's Client; pod
`patch` only for executors kept after they end and features the chart leaves off). The
cluster tier runs real drivers with this Role.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .render import (
    CASES,
    EXAMPLES,
    MANIFESTS,
    NOTEBOOK_CASES,
    SUBMIT_CASES,
    Case,
    Rendered,
    load_docs,
    render,
)

pytestmark = pytest.mark.bundle

CORE = ("pods", "services", "configmaps", "persistentvolumeclaims")
# Executor pods, their ConfigMap, the driver's Service, on-demand PVCs: made, read, watched,
# deleted one by one and by label (deletecollection) when the application stops.
SPARK_NEEDS = ("create", "get", "list", "watch", "delete", "deletecollection")


def can_i(role: dict[str, Any], verb: str, resource: str, group: str = "") -> bool:
    """Whether the Role's rules allow `verb` on `resource` (a subresource as `pods/exec`) of
    `group`, for any object name: RBAC's rule matching, wildcards included."""
    for rule in role.get("rules", []):
        if rule.get("resourceNames"):
            continue  # a named object only: not "any"
        if not {group, "*"} & set(rule.get("apiGroups", [])):
            continue
        if not {resource, "*"} & set(rule.get("resources", [])):
            continue
        if {verb, "*"} & set(rule.get("verbs", [])):
            return True
    return False


def driver_role(rendered: Rendered) -> dict[str, Any]:
    (role,) = [
        r
        for r in rendered.of_kind("Role")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] == "driver"
    ]
    return role


def test_the_evaluator_reads_wildcards_and_names() -> None:
    anything = {"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
    assert can_i(anything, "patch", "secrets", "apps")
    named = {"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"],
                        "resourceNames": ["mine"]}]}  # fmt: skip
    assert not can_i(named, "update", "configmaps")
    assert not can_i({"rules": []}, "get", "pods")


def _creates_rbac(case: Case) -> bool:
    values = yaml.safe_load((EXAMPLES / case.values_file).read_text(encoding="utf-8"))
    return bool(dict(case.overrides).get("rbac.create", values.get("rbac", {}).get("create", True)))


# The cases whose release makes its own Role (the others use manifests/rbac.yaml's).
ALL_CASES = {
    name: case
    for name, case in {**CASES, **SUBMIT_CASES, **NOTEBOOK_CASES}.items()
    if _creates_rbac(case)
}
SHARED = MANIFESTS / "rbac.yaml"


@pytest.fixture(scope="module")
def roles(helm: str) -> dict[str, dict[str, Any]]:
    return {name: driver_role(render(helm, name, case)) for name, case in ALL_CASES.items()}


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_the_driver_may_do_what_spark_does(roles: dict[str, dict[str, Any]], name: str) -> None:
    for resource in CORE:
        for verb in SPARK_NEEDS:
            assert can_i(roles[name], verb, resource), f"{name}: cannot {verb} {resource}"


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_a_driver_token_cannot_take_over_the_namespace(
    roles: dict[str, dict[str, Any]], name: str
) -> None:
    role = roles[name]
    for resource in CORE:
        assert not can_i(role, "update", resource), f"{name}: may update {resource}"
    for verb in ("get", "list", "create", "patch"):
        assert not can_i(role, verb, "secrets"), f"{name}: may {verb} secrets"
    for sub in ("pods/exec", "pods/attach", "pods/portforward", "pods/ephemeralcontainers"):
        assert not can_i(role, "create", sub) and not can_i(role, "patch", sub), name
    for verb, resource, group in [
        ("create", "roles", "rbac.authorization.k8s.io"),
        ("bind", "roles", "rbac.authorization.k8s.io"),
        ("escalate", "roles", "rbac.authorization.k8s.io"),
        ("impersonate", "serviceaccounts", ""),
        ("create", "serviceaccounts/token", ""),
        ("patch", "deployments", "apps"),
        ("create", "jobs", "batch"),
        ("patch", "sparkapplications", "sparkoperator.k8s.io"),
    ]:
        assert not can_i(role, verb, resource, group), f"{name}: may {verb} {resource}"


def test_with_the_operator_nothing_is_patched(roles: dict[str, dict[str, Any]]) -> None:
    """The operator runs spark-submit under its own account; the driver patches nothing: a
    driver token cannot swap a running pod's image or rewrite the trigger's ConfigMap."""
    for resource in CORE:
        assert not can_i(roles["chat"], "patch", resource), resource


def test_the_submitter_may_apply_what_spark_submit_applies(
    roles: dict[str, dict[str, Any]],
) -> None:
    """spark-submit writes the driver's Service, conf ConfigMap and PVCs by server-side
    apply (a PATCH); it creates the driver pod, which it never patches."""
    role = roles["submit-chat"]
    for resource in ("services", "configmaps", "persistentvolumeclaims"):
        assert can_i(role, "patch", resource), resource
    assert not can_i(role, "patch", "pods")


@pytest.mark.parametrize("operator", [True, False])
def test_executors_kept_after_they_end_may_be_labelled(helm: str, operator: bool) -> None:
    case = Case(
        "chat.yaml",
        (("executor.deleteOnTermination", False), ("operator.enabled", operator)),
    )
    role = driver_role(render(helm, "kept", case))
    assert can_i(role, "patch", "pods")
    assert not can_i(role, "update", "pods")
    assert can_i(role, "patch", "configmaps") is (not operator)


def test_the_shared_role_serves_both_paths() -> None:
    """manifests/rbac.yaml is applied once per namespace for every example release, the
    operator-less chat-job-spark-submit.yaml among them: spark-submit's apply is allowed,
    and nothing else is patched or updated."""
    (role,) = [d for d in load_docs(SHARED) if d["kind"] == "Role"]
    for resource in CORE:
        for verb in SPARK_NEEDS:
            assert can_i(role, verb, resource), f"cannot {verb} {resource}"
        assert not can_i(role, "update", resource), resource
    for resource in ("services", "configmaps", "persistentvolumeclaims"):
        assert can_i(role, "patch", resource), resource
    assert not can_i(role, "patch", "pods")
    assert not can_i(role, "get", "secrets")
