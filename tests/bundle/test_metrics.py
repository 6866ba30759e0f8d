"""metrics.enabled: the driver's job metrics and each executor's vLLM metrics on pod ports,
behind the bearer token from a Secret; PodMonitors that find them; NetworkPolicies that let
only the monitoring namespaces in, only on those ports; a Grafana dashboard. On both paths
(operator and spark-submit) and in both sidecar modes; with metrics off, none of it."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml

from .render import (
    CASES,
    CHART,
    CRDS,
    METRICS,
    NAMESPACE,
    SPARK_CONTAINER,
    SUBMIT_CASES,
    Case,
    Doc,
    Rendered,
    containers_of,
    operator_pod,
    pod_monitor_validator,
    render,
    run_helm,
    spark_pod,
)

pytestmark = pytest.mark.bundle

SECRET = dict(METRICS)["metrics.tokenSecret.name"]
TOKEN_ENV = "SPARK_VLLM_METRICS_TOKEN"
DRIVER_PORT = 9464
SIDECAR_PORT = 9400
VLLM_PORT = 8000
# name -> (operator path?, sidecar mode)
METRICS_CASES = {
    "metrics": (True, "native"),
    "metrics-classic": (True, "classic"),
    "submit-metrics": (False, "native"),
    "submit-metrics-classic": (False, "classic"),
}
# What each PodMonitor scrapes: its port's name, and the container that must declare it
# (None: the Spark container).
TARGETS = {"driver": ("job-metrics", None), "executors": ("vllm-metrics", "vllm-metrics")}


@pytest.fixture(scope="module")
def renders(rendered: dict[str, Rendered], helm: str) -> dict[str, Rendered]:
    """The four metrics cases: the operator ones from the session, the spark-submit ones here."""
    found = {name: rendered[name] for name, (operator, _) in METRICS_CASES.items() if operator}
    for name, (operator, _) in METRICS_CASES.items():
        if not operator:
            found[name] = render(helm, name, SUBMIT_CASES[name])
    return found


def pods(result: Rendered) -> dict[str, Doc]:
    """The driver and executor pods as they reach the API server, on either path."""
    if not result.of_kind("Job"):  # the operator path
        spec = result.app_spec()
        return {role: operator_pod(spec, role, result.name) for role in SPARK_CONTAINER}
    props = result.spark_properties()
    return {
        role: spark_pod(result.pod_template(role), props, role, f"{result.name}-{role}")
        for role in SPARK_CONTAINER
    }


def container(pod: Doc, name: str) -> Doc:
    (found,) = [c for c in containers_of(pod) if c["name"] == name]
    return found


def pod_monitors(result: Rendered) -> dict[str, Doc]:
    """The PodMonitors by what they scrape: driver, executors."""
    found = {}
    for monitor in result.of_kind("PodMonitor"):
        name = monitor["metadata"]["name"]
        found[name.rsplit("-", 1)[1]] = monitor
    assert len(found) == len(result.of_kind("PodMonitor"))
    return found


def policy(result: Rendered, suffix: str) -> Doc:
    (found,) = [
        p["spec"] for p in result.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith(suffix)
    ]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def helm_template(helm: str, case: Case) -> subprocess.CompletedProcess[str]:
    return run_helm(helm, "template", "t", str(CHART), "--namespace", NAMESPACE, *case.helm_args())


# --- PodMonitors ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS_CASES))
def test_pod_monitors_pass_the_pinned_crd_strictly(renders: dict[str, Rendered], name: str) -> None:
    validator = pod_monitor_validator()
    monitors = pod_monitors(renders[name])
    assert sorted(monitors) == ["driver", "executors"]
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == NAMESPACE
        errors = [e.message for e in validator.iter_errors(monitor)]
        assert not errors, errors


def _a_pod_monitor(renders: dict[str, Rendered]) -> Doc:
    return copy.deepcopy(pod_monitors(renders["metrics"])["executors"])


@pytest.mark.parametrize(
    ("where", "right", "wrong"),
    [
        (("spec", "podMetricsEndpoints", 0), "interval", "intervall"),
        (("spec",), "podMetricsEndpoints", "podMetricEndpoints"),
        (("spec", "selector"), "matchLabels", "matchLabel"),
        (("spec", "podMetricsEndpoints", 0, "authorization"), "credentials", "credential"),
    ],
)
def test_strict_validator_refuses_a_misspelled_field(
    renders: dict[str, Rendered], where: tuple[str | int, ...], right: str, wrong: str
) -> None:
    """A test of the test: the CRD's own schema lets a misspelled field through (the API
    server would prune it without a word); the strict validator does not."""
    monitor = _a_pod_monitor(renders)
    node: Any = monitor
    for step in where:
        node = node[step]
    node[wrong] = node.pop(right)
    crd = yaml.safe_load((CRDS / "monitoring.coreos.com_podmonitors.yaml").read_text())
    lenient = jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert lenient.is_valid(monitor), "the CRD's own schema should not catch this"
    errors = [e.message for e in pod_monitor_validator().iter_errors(monitor)]
    assert any(f"'{wrong}' was unexpected" in e for e in errors), errors


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "podMetricsEndpoints", 0, "interval"), 15),
        (("spec", "podMetricsEndpoints", 0, "interval"), "15 seconds"),
        (("spec", "podMetricsEndpoints"), {"port": "vllm-metrics"}),
        (("spec", "selector", "matchLabels"), ["app.kubernetes.io/component"]),
    ],
)
def test_strict_validator_refuses_a_wrong_type_or_format(
    renders: dict[str, Rendered], path: tuple[str | int, ...], value: Any
) -> None:
    monitor = _a_pod_monitor(renders)
    node: Any = monitor
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    assert not pod_monitor_validator().is_valid(monitor)


@pytest.mark.parametrize("name", sorted(METRICS_CASES))
def test_pod_monitors_select_the_pods_and_name_their_ports(
    renders: dict[str, Rendered], name: str
) -> None:
    result = renders[name]
    by_role = pods(result)
    roles = {"driver": "driver", "executors": "executor"}
    for target, monitor in pod_monitors(result).items():
        role = roles[target]
        other = "executor" if role == "driver" else "driver"
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selects(selector, by_role[role]["metadata"]["labels"]), f"{target} finds no pod"
        assert not selects(selector, by_role[other]["metadata"]["labels"])
        assert not selects(selector, {**selector, "app.kubernetes.io/instance": "someone-else"})
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        port_name, container_name = TARGETS[target]
        assert endpoint["port"] == port_name
        assert endpoint["path"] == "/metrics"
        assert endpoint["interval"] == "15s"
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": SECRET, "key": "token"},
        }
        holders = [
            c["name"]
            for c in containers_of(by_role[role])
            for p in c.get("ports", [])
            if p["name"] == port_name
        ]
        assert holders == [container_name or SPARK_CONTAINER[role]], holders


# --- the pods ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS_CASES))
def test_metrics_proxy_runs_beside_vllm_with_the_token_from_the_secret(
    renders: dict[str, Rendered], name: str
) -> None:
    mode = METRICS_CASES[name][1]
    executor = pods(renders[name])["executor"]
    proxy = container(executor, "vllm-metrics")
    vllm = container(executor, "vllm")
    init = [c["name"] for c in executor["spec"].get("initContainers", [])]
    if mode == "native":
        assert init == ["vllm", "vllm-metrics"]
        assert proxy["restartPolicy"] == "Always"
    else:
        assert init == []
        assert "restartPolicy" not in proxy
    args = proxy["args"]
    assert args[:3] == ["python3", "-m", "spark_vllm.cluster.metrics_proxy"]
    assert args[args.index("--listen") + 1] == f"0.0.0.0:{SIDECAR_PORT}"
    assert args[args.index("--upstream") + 1] == f"http://127.0.0.1:{VLLM_PORT}/metrics"
    assert args[args.index("--token-env") + 1] == TOKEN_ENV
    assert proxy["ports"] == [
        {"name": "vllm-metrics", "containerPort": SIDECAR_PORT, "protocol": "TCP"}
    ]
    assert proxy["env"] == [
        {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "token"}}}
    ]
    assert proxy["securityContext"] == vllm["securityContext"]
    assert proxy["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert proxy["resources"]["limits"] == {"memory": "128Mi"}
    # the spark-vllm image (it holds spark_vllm), whatever image the vLLM sidecar runs
    assert proxy["image"] == "registry.example.com/spark-vllm:0.1.0"
    # vLLM's own API stays on loopback, with no port declared
    vllm_args = vllm["args"]
    assert vllm_args[vllm_args.index("--host") + 1] == "127.0.0.1"
    assert vllm_args[vllm_args.index("--port") + 1] == str(VLLM_PORT)
    assert not vllm.get("ports")


@pytest.mark.parametrize("name", sorted(METRICS_CASES))
def test_driver_gets_the_token_and_its_metrics_port(
    renders: dict[str, Rendered], name: str
) -> None:
    driver = container(pods(renders[name])["driver"], "spark-kubernetes-driver")
    assert driver["ports"] == [
        {"name": "job-metrics", "containerPort": DRIVER_PORT, "protocol": "TCP"}
    ]
    env = {e["name"]: e for e in driver["env"]}
    assert env[TOKEN_ENV] == {
        "name": TOKEN_ENV,
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "token"}},
    }
    assert "AWS_ACCESS_KEY_ID" in env, "the user's driver.env is kept"


@pytest.mark.parametrize("name", sorted(METRICS_CASES))
def test_job_spec_serves_metrics_on_the_drivers_port(
    renders: dict[str, Rendered], name: str
) -> None:
    from spark_vllm.spec import spec_from_dict

    job = renders[name].job_spec()
    assert job["metrics"] == {"enabled": True, "token_env": TOKEN_ENV}
    assert job["progress"] == {"port": DRIVER_PORT}
    spec = spec_from_dict(job)
    assert spec.metrics.enabled and spec.progress.port == DRIVER_PORT


def test_both_paths_give_the_same_proxy_and_driver_settings(
    renders: dict[str, Rendered],
) -> None:
    for operator, submit in (
        ("metrics", "submit-metrics"),
        ("metrics-classic", "submit-metrics-classic"),
    ):
        a, b = pods(renders[operator]), pods(renders[submit])
        assert container(a["executor"], "vllm-metrics") == container(b["executor"], "vllm-metrics")
        drivers = [container(p["driver"], "spark-kubernetes-driver") for p in (a, b)]
        assert drivers[0]["ports"] == drivers[1]["ports"]
        assert drivers[0]["env"] == drivers[1]["env"]


# --- the network ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS_CASES))
def test_network_policy_admits_the_monitoring_namespace_only_on_the_metrics_ports(
    renders: dict[str, Rendered], name: str
) -> None:
    result = renders[name]
    by_role = pods(result)
    for suffix, role, port in (
        ("-executors", "executor", SIDECAR_PORT),
        ("-driver", "driver", DRIVER_PORT),
    ):
        spec = policy(result, suffix)
        assert selects(spec["podSelector"]["matchLabels"], by_role[role]["metadata"]["labels"])
        scrapers = [r for r in spec["ingress"] if any("namespaceSelector" in p for p in r["from"])]
        peers = [r for r in spec["ingress"] if r not in scrapers]
        assert scrapers == [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": port}],
            }
        ]
        # the job's own pods, as without metrics: pod selectors only, no namespace widening
        (rule,) = peers
        assert all(set(p) == {"podSelector"} for p in rule["from"])
        # the admitted port is the one the PodMonitor scrapes
        named = {
            p["name"]: p["containerPort"]
            for c in containers_of(by_role[role])
            for p in c.get("ports", [])
        }
        assert named[TARGETS["driver" if role == "driver" else "executors"][0]] == port


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_config_map_carries_grafanas_label_and_a_dashboard(
    renders: dict[str, Rendered],
) -> None:
    for name in METRICS_CASES:
        (config,) = [
            c
            for c in renders[name].of_kind("ConfigMap")
            if c["metadata"]["name"].endswith("-dashboard")
        ]
        assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key,) = config["data"]
        assert key.endswith(".json")
        dashboard = json.loads(config["data"][key])
        assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exprs = []
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert target["expr"].count("(") == target["expr"].count(")")
            exprs.append(target["expr"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    shown = " ".join(exprs)
    for metric in (
        "spark_vllm_rows_total",
        'spark_vllm_rows_total{outcome="failed"}',
        "spark_vllm_rows_to_send",
        "spark_vllm_completion_tokens_total",
        "spark_vllm_prompt_tokens_total",
        "spark_vllm_rows_in_flight",
        "spark_vllm_retries_total",
        "spark_vllm_sidecar_outage_seconds_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket",
    ):
        assert metric in shown, f"no panel shows {metric}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({quantile}, sum by (le) "
            "(rate(vllm:e2e_request_latency_seconds_bucket[5m])))"
        ) in exprs


# --- switches and refusals -----------------------------------------------------------------


def test_pod_monitors_and_dashboard_follow_their_switches(helm: str) -> None:
    off = Case(
        "chat.yaml",
        (*METRICS, ("metrics.podMonitor.enabled", False), ("metrics.dashboard.enabled", False)),
    )
    result = render(helm, "switches-off", off)
    assert not result.of_kind("PodMonitor")
    assert [c["metadata"]["name"] for c in result.of_kind("ConfigMap")] == ["chat-demo-job"]
    container(pods(result)["executor"], "vllm-metrics")  # the proxy stays
    labelled = Case(
        "chat.yaml",
        (
            *METRICS,
            ("metrics.podMonitor.labels", {"release": "kube-prometheus-stack"}),
            ("metrics.podMonitor.interval", "30s"),
            ("metrics.dashboard.labels", {"dashboards": "llm"}),
        ),
    )
    result = render(helm, "labelled", labelled)
    for monitor in result.of_kind("PodMonitor"):
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "30s"
    (dashboard,) = [
        c for c in result.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    assert dashboard["metadata"]["labels"]["dashboards"] == "llm"


def test_users_token_variable_is_the_one_the_driver_gets(helm: str) -> None:
    case = Case("chat.yaml", (*METRICS, ("job.metrics", {"token_env": "SCRAPE_TOKEN"})))
    result = render(helm, "own-variable", case)
    assert result.job_spec()["metrics"] == {"enabled": True, "token_env": "SCRAPE_TOKEN"}
    driver = container(pods(result)["driver"], "spark-kubernetes-driver")
    names = [e["name"] for e in driver["env"]]
    assert "SCRAPE_TOKEN" in names and TOKEN_ENV not in names


@pytest.mark.parametrize("operator", [True, False])
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            (("metrics.enabled", True),),
            "metrics.tokenSecret.name is required when metrics.enabled",
        ),
        (
            (*METRICS, ("job.progress", {"port": 1234})),
            "job.progress.port 1234 differs from metrics.driverPort 9464",
        ),
        (
            (*METRICS, ("job.metrics", {"enabled": False})),
            "job.metrics.enabled is false but metrics.enabled is true",
        ),
        (
            (*METRICS, ("metrics.sidecarPort", VLLM_PORT)),
            "metrics.sidecarPort 8000 is sidecar.port",
        ),
        ((*METRICS, ("metrics.podMonitor.intervall", "15s")), "'intervall' not allowed"),
        ((*METRICS, ("metrics.driverPort", "9464")), "got string, want integer"),
    ],
)
def test_bad_metrics_values_are_refused_naming_the_value(
    helm: str, operator: bool, overrides: tuple[tuple[str, Any], ...], message: str
) -> None:
    case = Case("chat.yaml", (("operator.enabled", operator), *overrides))
    result = helm_template(helm, case)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_volcano_counts_the_metrics_proxies(helm: str) -> None:
    result = render(helm, "volcano", Case("chat.yaml", (*METRICS, ("volcano.enabled", True))))
    resources = result.app_spec()["batchSchedulerOptions"]["resources"]
    # without metrics: 13 cores and 81024 - 2 * 64 MiB (test_traps.py); plus 2 proxies
    assert resources["cpu"] == "13100m"
    assert resources["memory"] == "81024Mi"


# --- metrics off (the default) -------------------------------------------------------------


def _without_metrics(cases: dict[str, Case]) -> list[str]:
    return sorted(n for n, c in cases.items() if not dict(c.overrides).get("metrics.enabled"))


@pytest.mark.parametrize("name", _without_metrics(CASES))
def test_metrics_off_renders_none_of_it(rendered: dict[str, Rendered], name: str) -> None:
    _assert_no_metrics(rendered[name])


@pytest.mark.parametrize("name", _without_metrics(SUBMIT_CASES))
def test_metrics_off_renders_none_of_it_without_the_operator(helm: str, name: str) -> None:
    _assert_no_metrics(render(helm, name, SUBMIT_CASES[name]))


def _assert_no_metrics(result: Rendered) -> None:
    assert not result.of_kind("PodMonitor")
    assert not [c for c in result.of_kind("ConfigMap") if "-dashboard" in c["metadata"]["name"]]
    for role, pod in pods(result).items():
        names = [c["name"] for c in containers_of(pod)]
        assert "vllm-metrics" not in names
        for c in containers_of(pod):
            assert not c.get("ports"), f"{role} container {c['name']} declares ports"
            assert TOKEN_ENV not in {e["name"] for e in c.get("env", [])}
    for spec in (p["spec"] for p in result.of_kind("NetworkPolicy")):
        for rule in spec.get("ingress", []):
            assert "ports" not in rule
            assert all("namespaceSelector" not in p for p in rule["from"])
    job = result.job_spec()
    assert "metrics" not in job
    assert "port" not in job.get("progress", {})
