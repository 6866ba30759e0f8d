"""Pins for the Spark Operator, Volcano and vLLM traps that a plausible chart falls into.

Each test names the trap; see charts/spark-vllm/README.md for the reasoning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .render import (
    CHART,
    SPARK_CONTAINER,
    Case,
    Rendered,
    containers_of,
    operator_pod,
    render,
    run_helm,
    vllm_container,
)

pytestmark = pytest.mark.bundle

ALL_VOLUMES_CASES = [
    "chat",
    "scheduled",
    "classic-sidecar",
    "pvc-created",
    "hostpath-cache",
    "hf-download",
    "tensor-parallel-2",
    "cpu-only",
    "api-key",
]


@pytest.mark.parametrize("name", ["chat", "classic-sidecar", "tensor-parallel-2", "scheduled"])
def test_sidecar_holds_the_gpu_limit_not_the_spark_container(
    rendered: dict[str, Rendered], name: str
) -> None:
    """The operator's executor.gpu puts GPUs on the Spark container only: vLLM would get none."""
    spec = rendered[name].app_spec()
    assert "gpu" not in spec["executor"]
    vllm = vllm_container(spec)
    args = vllm["args"]
    gpus = args[args.index("--tensor-parallel-size") + 1]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == gpus
    pod = operator_pod(spec, "executor", name)
    spark = next(c for c in pod["spec"]["containers"] if c["name"] == SPARK_CONTAINER["executor"])
    assert "nvidia.com/gpu" not in spark["resources"]["limits"]


def test_tensor_parallel_over_two_gpus(rendered: dict[str, Rendered]) -> None:
    vllm = vllm_container(rendered["tensor-parallel-2"].app_spec())
    assert vllm["args"][vllm["args"].index("--tensor-parallel-size") + 1] == "2"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == "2"


def test_tensor_parallelism_and_shm_follow_the_sidecars_gpus(rendered: dict[str, Rendered]) -> None:
    """gpu.count is the one knob: vLLM gets one rank per GPU and 4 GiB of /dev/shm each."""
    sizes = {}
    for name in ("chat", "tensor-parallel-2", "cpu-only"):
        spec = rendered[name].app_spec()
        args = vllm_container(spec)["args"]
        (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
        sizes[name] = (args[args.index("--tensor-parallel-size") + 1], shm["emptyDir"]["sizeLimit"])
    assert sizes == {
        "chat": ("1", "4096Mi"),
        "tensor-parallel-2": ("2", "8192Mi"),
        "cpu-only": ("1", "1024Mi"),
    }


def test_more_tensor_parallel_ranks_than_gpus_is_refused(helm: str) -> None:
    case = Case("chat.yaml", (("sidecar.gpu.count", 2), ("sidecar.vllm.tensorParallelSize", 4)))
    result = run_helm(helm, "template", "t", str(CHART), *case.helm_args())
    assert result.returncode != 0
    assert "tensorParallelSize 4 needs that many GPUs, but sidecar.gpu.count is 2" in result.stderr
    fewer = Case("chat.yaml", (("sidecar.gpu.count", 4), ("sidecar.vllm.tensorParallelSize", 2)))
    assert run_helm(helm, "template", "t", str(CHART), *fewer.helm_args()).returncode == 0


def test_embedding_job_gets_a_pooling_sidecar(rendered: dict[str, Rendered], helm: str) -> None:
    """vLLM serves an embedding model on /v1/embeddings only with --runner pooling."""

    def runner(args: list[str]) -> str | None:
        return args[args.index("--runner") + 1] if "--runner" in args else None

    assert runner(vllm_container(rendered["embedding"].app_spec())["args"]) == "pooling"
    assert runner(vllm_container(rendered["chat"].app_spec())["args"]) is None
    explicit = Case("chat.yaml", (("sidecar.vllm.runner", "pooling"),))
    assert runner(vllm_container(render(helm, "t", explicit).app_spec())["args"]) == "pooling"


def test_cpu_only_sidecar_asks_for_no_gpu(rendered: dict[str, Rendered]) -> None:
    vllm = vllm_container(rendered["cpu-only"].app_spec())
    assert "nvidia.com/gpu" not in vllm["resources"]["limits"]
    assert (
        "nvidia.com/gpu"
        not in rendered["cpu-only"].app_spec()["batchSchedulerOptions"]["resources"]
    )


@pytest.mark.parametrize("name", ALL_VOLUMES_CASES)
def test_every_mounted_volume_reaches_the_pod_through_the_webhook(
    rendered: dict[str, Rendered], name: str
) -> None:
    """The webhook adds a volume only when executor.volumeMounts (the Spark container) names
    it: the sidecar's model cache and /dev/shm must be listed there too."""
    spec = rendered[name].app_spec()
    for role in ("driver", "executor"):
        pod = operator_pod(spec, role, name)
        declared = {v["name"] for v in pod["spec"]["volumes"]}
        for container in containers_of(pod):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in declared, (
                    f"{role} container {container['name']} mounts {mount['name']}, "
                    "which the webhook never adds to the pod"
                )
    executor_mounts = {m["name"] for m in spec["executor"]["volumeMounts"]}
    assert {"model-cache", "dshm"} <= executor_mounts


@pytest.mark.parametrize("name", ["chat", "scheduled"])
def test_pod_templates_name_the_namespace_so_that_the_webhook_mutates_the_pods(
    rendered: dict[str, Rendered], name: str
) -> None:
    """The operator's pod webhook (v2.5.2) reads the namespace from the pod in the request,
    and Spark 4.2 creates its pods without one: the webhook then lets them through
    unmutated (no sidecar, no volumes; seen with the real operator in the cluster tier). A
    pod template that names the namespace makes Spark send it. The template holds nothing
    else: the sidecar, volumes, env and security contexts stay the webhook's, which adds them
    whatever the template (an earlier reading of the source, that a template turns the
    webhook off, was wrong: its objectSelector is the launched-by label, always set)."""
    spec = rendered[name].app_spec()
    for role in ("driver", "executor"):
        assert spec[role]["template"] == {
            "metadata": {"namespace": "spark-jobs"},
            "spec": {"containers": [{"name": f"spark-kubernetes-{role}"}]},
        }


@pytest.mark.parametrize("name", ["chat", "classic-sidecar", "scheduled"])
def test_vllm_binds_loopback_and_is_probed_from_inside_the_pod(
    rendered: dict[str, Rendered], name: str
) -> None:
    """vLLM on 127.0.0.1 is unreachable from outside the pod, kubelet httpGet probes included
    (they dial the pod IP): the probes must exec inside the container."""
    vllm = vllm_container(rendered[name].app_spec())
    args = vllm["args"]
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert "0.0.0.0" not in " ".join(args)
    assert not vllm.get("ports"), "a loopback server has no port to declare"
    port = args[args.index("--port") + 1]
    probes = ["startupProbe", "readinessProbe"]
    probes += ["livenessProbe"] if name != "classic-sidecar" else []
    for probe in probes:
        assert "httpGet" not in vllm[probe]
        assert f"http://127.0.0.1:{port}/health" in " ".join(vllm[probe]["exec"]["command"])


def test_classic_sidecar_restarts_vllm_itself_and_has_no_liveness_probe(
    rendered: dict[str, Rendered],
) -> None:
    """Spark gives executor pods restartPolicy Never: the kubelet restarts no container, so
    a liveness probe would only kill vLLM for good. A loop in the container restarts it."""
    vllm = vllm_container(rendered["classic-sidecar"].app_spec())
    assert "livenessProbe" not in vllm
    assert vllm["command"][:2] == ["/bin/bash", "-c"]
    assert "while true" in vllm["command"][2]
    assert vllm["command"][3] == "vllm-supervisor"
    native = vllm_container(rendered["chat"].app_spec())
    assert vllm["command"][4:] == native["command"]
    assert vllm["args"] == native["args"]


def test_startup_probe_waits_as_long_as_the_model_load_may_take(
    rendered: dict[str, Rendered],
) -> None:
    chat = vllm_container(rendered["chat"].app_spec())["startupProbe"]
    assert chat["periodSeconds"] * chat["failureThreshold"] >= 1800
    big = vllm_container(rendered["scheduled"].app_spec())["startupProbe"]
    assert big["periodSeconds"] * big["failureThreshold"] >= 3600


def test_native_sidecar_is_an_always_restarting_init_container(
    rendered: dict[str, Rendered],
) -> None:
    executor = rendered["chat"].app_spec()["executor"]
    assert "sidecars" not in executor
    (vllm,) = executor["initContainers"]
    assert vllm["restartPolicy"] == "Always"
    assert "startupProbe" in vllm  # the executor starts only once vLLM answers


def test_classic_mode_renders_a_plain_sidecar(rendered: dict[str, Rendered]) -> None:
    executor = rendered["classic-sidecar"].app_spec()["executor"]
    assert "initContainers" not in executor
    (vllm,) = executor["sidecars"]
    assert "restartPolicy" not in vllm


def test_sidecar_has_a_memory_backed_shm_sized_by_a_value(rendered: dict[str, Rendered]) -> None:
    spec = rendered["scheduled"].app_spec()
    (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16384Mi"}
    mounts = {m["name"]: m["mountPath"] for m in vllm_container(spec)["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"


@pytest.mark.parametrize(
    ("name", "source", "model_arg"),
    [
        ("chat", "persistentVolumeClaim", "/models/Qwen2.5-7B-Instruct"),
        ("hostpath-cache", "hostPath", "/models/Qwen2.5-7B-Instruct"),
        ("hf-download", "emptyDir", "Qwen/Qwen2.5-7B-Instruct"),
        ("scheduled", "hostPath", "meta-llama/Llama-3.3-70B-Instruct"),
    ],
)
def test_model_comes_from_the_configured_cache(
    rendered: dict[str, Rendered], name: str, source: str, model_arg: str
) -> None:
    spec = rendered[name].app_spec()
    (cache,) = [v for v in spec["volumes"] if v["name"] == "model-cache"]
    assert source in cache
    args = vllm_container(spec)["args"]
    assert args[args.index("--model") + 1] == model_arg


def test_hugging_face_token_comes_from_a_secret(rendered: dict[str, Rendered]) -> None:
    env = {e["name"]: e for e in vllm_container(rendered["hf-download"].app_spec())["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "huggingface",
        "key": "HF_TOKEN",
    }
    assert env["HF_HOME"]["value"] == "/models/huggingface"


def test_api_key_reaches_vllm_and_the_executor_from_one_secret(
    rendered: dict[str, Rendered],
) -> None:
    spec = rendered["api-key"].app_spec()
    ref = {"name": "vllm-api-key", "key": "api-key"}
    sidecar_env = {e["name"]: e for e in vllm_container(spec)["env"]}
    assert sidecar_env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == ref
    executor_env = {e["name"]: e for e in spec["executor"]["env"]}
    assert executor_env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == ref
    assert "--api-key" not in vllm_container(spec)["args"], "the key would sit in the pod spec"


def test_spark_memory_is_given_in_mib_strings_spark_understands(
    rendered: dict[str, Rendered],
) -> None:
    spec = rendered["chat"].app_spec()
    assert spec["driver"]["memory"] == "2048m"
    assert spec["executor"]["memory"] == "4096m"
    assert spec["executor"]["memoryOverhead"] == "2048m"


@pytest.mark.parametrize(
    ("name", "cpu", "memory", "gpus"),
    [
        # driver 1 core + 2 executors x (2 cores + 4 sidecar cores);
        # (2048 + 1024) + 2 x (4096 + 2048 + 32768) MiB; 2 sidecars x 1 GPU
        ("volcano", "13", "80896Mi", "2"),
        ("tensor-parallel-2", "13", "80896Mi", "4"),
        # dynamic allocation starts max(initial 3, min 2) executors
        ("dynamic-allocation", "19", "119808Mi", "3"),
        # 1 + 2 x (4 + 8) cores; 3072 + 2 x (8192 + 2048 + 131072) MiB; 2 x 2 GPUs
        ("scheduled", "25", "285696Mi", "4"),
    ],
)
def test_volcano_resources_count_sidecars_and_gpus(
    rendered: dict[str, Rendered], name: str, cpu: str, memory: str, gpus: str
) -> None:
    """The operator's own PodGroup sum sees no GPUs and no sidecars and misreads Spark memory
    strings, so the chart states the resources itself, in Kubernetes units."""
    spec = rendered[name].app_spec()
    assert spec["batchScheduler"] == "volcano"
    assert spec["batchSchedulerOptions"]["resources"] == {
        "cpu": cpu,
        "memory": memory,
        "nvidia.com/gpu": gpus,
    }


# spark.kubernetes.<role>.request.cores in sparkConf is what Spark requests for the pod; the
# sidecar's cpu may be a quantity. Keys with dots, so --set-json cannot name them: -f.
FRACTIONAL_CPU = {
    "volcano": {"enabled": True},
    "sidecar": {"cpu": "500m"},
    "sparkConf": {
        "spark.kubernetes.driver.request.cores": "0.5",
        "spark.kubernetes.executor.request.cores": "1500m",
    },
}


@pytest.mark.parametrize(
    ("values", "cpu", "sidecar_cpu"),
    [
        # 500m + 2 x (1500m + 500m)
        (FRACTIONAL_CPU, "4500m", "500m"),
        # 500m + 2 x (1500m + 1000m): whole again
        ({**FRACTIONAL_CPU, "sidecar": {"cpu": 1}}, "5500m", "1"),
        # 1 core + 2 x (2 cores + 1.5): whole cores when the sum is whole
        ({"volcano": {"enabled": True}, "sidecar": {"cpu": "1.5"}}, "8", "1.5"),
    ],
)
def test_volcano_resources_count_the_cpu_the_pods_request(
    helm: str, tmp_path: Path, values: dict[str, Any], cpu: str, sidecar_cpu: str
) -> None:
    """A PodGroup that asks for more CPU than its pods request never fits a node its pods
    would fit: the chart sums what Spark and the sidecar will request."""
    extra = tmp_path / "cpu.yaml"
    extra.write_text(yaml.safe_dump(values))
    spec = render(helm, "t", Case("chat.yaml"), "-f", str(extra)).app_spec()
    assert spec["batchSchedulerOptions"]["resources"]["cpu"] == cpu
    assert vllm_container(spec)["resources"]["requests"]["cpu"] == sidecar_cpu


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sidecar": {"cpu": "half"}}, "at '/sidecar/cpu'"),
        ({"sidecar": {"cpu": 0}}, "at '/sidecar/cpu'"),
        (
            {
                "volcano": {"enabled": True},
                "sparkConf": {"spark.kubernetes.executor.request.cores": "two"},
            },
            'a CPU quantity such as "300m", "0.5" or "2" was expected, got "two"',
        ),
    ],
)
def test_a_cpu_that_is_no_quantity_is_refused_by_name(
    helm: str, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    extra = tmp_path / "cpu.yaml"
    extra.write_text(yaml.safe_dump(values))
    args = [*Case("chat.yaml").helm_args(), "-f", str(extra)]
    result = run_helm(helm, "template", "t", str(CHART), *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_volcano_off_leaves_the_default_scheduler(rendered: dict[str, Rendered]) -> None:
    spec = rendered["chat"].app_spec()
    assert "batchScheduler" not in spec
    assert "batchSchedulerOptions" not in spec


def test_volcano_queue_and_priority_reach_the_application(rendered: dict[str, Rendered]) -> None:
    spec = rendered["scheduled"].app_spec()
    options = spec["batchSchedulerOptions"]
    assert (options["queue"], options["priorityClassName"]) == ("batch-llm", "batch-low")
    assert rendered["scheduled"].one("Queue")["spec"]["capability"] == {"nvidia.com/gpu": "16"}


def test_dynamic_allocation_tracks_shuffle_files(rendered: dict[str, Rendered]) -> None:
    spec = rendered["dynamic-allocation"].app_spec()
    assert spec["dynamicAllocation"] == {
        "enabled": True,
        "initialExecutors": 3,
        "minExecutors": 2,
        "maxExecutors": 6,
        "shuffleTrackingEnabled": True,
    }
    assert "instances" not in spec["executor"]


def test_schedule_wraps_the_same_application(rendered: dict[str, Rendered]) -> None:
    scheduled = rendered["scheduled"].one("ScheduledSparkApplication")["spec"]
    assert scheduled["schedule"] == "0 2 * * *"
    assert scheduled["timeZone"] == "Europe/Berlin"
    assert scheduled["concurrencyPolicy"] == "Forbid"
    assert not rendered["scheduled"].of_kind("SparkApplication")


def test_network_policy_admits_only_this_jobs_driver_and_executors(
    rendered: dict[str, Rendered],
) -> None:
    result = rendered["chat"]
    (policy,) = [
        p["spec"]
        for p in result.of_kind("NetworkPolicy")
        if p["metadata"]["name"].endswith("-executors")
    ]
    spec = result.app_spec()
    executor_labels = operator_pod(spec, "executor", "chat")["metadata"]["labels"]
    driver_labels = operator_pod(spec, "driver", "chat")["metadata"]["labels"]
    selects = lambda selector, labels: selector.items() <= labels.items()  # noqa: E731
    assert selects(policy["podSelector"]["matchLabels"], executor_labels)
    assert not selects(policy["podSelector"]["matchLabels"], driver_labels)
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert "ports" not in rule
    peers = [p["podSelector"]["matchLabels"] for p in rule["from"]]
    assert any(selects(p, driver_labels) for p in peers)
    other_release = {**executor_labels, "app.kubernetes.io/instance": "someone-else"}
    assert not any(selects(p, other_release) for p in peers)


def test_driver_admits_only_its_executors(rendered: dict[str, Rendered]) -> None:
    result = rendered["chat"]
    (policy,) = [
        p["spec"]
        for p in result.of_kind("NetworkPolicy")
        if p["metadata"]["name"].endswith("-driver")
    ]
    spec = result.app_spec()
    driver_labels = operator_pod(spec, "driver", "chat")["metadata"]["labels"]
    executor_labels = operator_pod(spec, "executor", "chat")["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= driver_labels.items()
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= executor_labels.items()


def test_executors_run_under_a_service_account_without_a_token(
    rendered: dict[str, Rendered],
) -> None:
    result = rendered["chat"]
    accounts = {a["metadata"]["name"]: a for a in result.of_kind("ServiceAccount")}
    spec = result.app_spec()
    assert accounts[spec["executor"]["serviceAccount"]]["automountServiceAccountToken"] is False
    assert accounts[spec["driver"]["serviceAccount"]]["automountServiceAccountToken"] is True
    binding = result.one("RoleBinding")
    assert [s["name"] for s in binding["subjects"]] == [spec["driver"]["serviceAccount"]]


def test_rapids_gets_a_gpu_of_its_own_and_is_counted(rendered: dict[str, Rendered]) -> None:
    """RAPIDS runs in the Spark container, so it needs its own GPU: the sidecar keeps its."""
    spec = rendered["rapids"].app_spec()
    conf = spec["sparkConf"]
    assert conf["spark.plugins"] == "com.nvidia.spark.SQLPlugin"
    jar = "/opt/spark-vllm/jars/rapids-4-spark.jar"
    assert conf["spark.driver.extraClassPath"] == conf["spark.executor.extraClassPath"] == jar
    assert conf["spark.executor.resource.gpu.amount"] == "1"
    assert spec["executor"]["gpu"] == {"name": "nvidia.com/gpu", "quantity": 1}
    assert vllm_container(spec)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Two executors, each with one GPU for vLLM and one for RAPIDS.
    assert spec["batchSchedulerOptions"]["resources"]["nvidia.com/gpu"] == "4"
    assert "spark.plugins" not in rendered["chat"].app_spec().get("sparkConf", {})


def test_classic_sidecar_loop_restarts_a_killed_server_and_stops_on_sigterm(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    """The rendered loop, run by bash with a stand-in server that, like vLLM under tini, has
    a helper process in a process group of its own: kill the server, and the loop ends the
    helper (vLLM's engine would hold the memory the next server needs) and starts another;
    SIGTERM to the loop (the kubelet stopping the pod) ends it and the server."""
    script = vllm_container(rendered["classic-sidecar"].app_spec())["command"][2]
    starts = tmp_path / "starts"
    helpers = tmp_path / "helpers"
    server = f"set -m; sleep 300 & echo $! >> {helpers}; echo $$ >> {starts}; wait"
    loop = subprocess.Popen(["bash", "-c", script, "vllm-supervisor", "bash", "-c", server])
    try:
        _wait(lambda: starts.exists() and len(starts.read_text().split()) == 1)
        first = int(starts.read_text().split()[0])
        helper = int(helpers.read_text().split()[0])
        assert os.getpgid(helper) != os.getpgid(first)
        os.kill(first, signal.SIGKILL)
        _wait(lambda: len(starts.read_text().split()) == 2, timeout=20)
        assert not _alive(helper), "the killed server's helper outlived it"
        second = int(starts.read_text().split()[1])
        loop.send_signal(signal.SIGTERM)
        assert loop.wait(timeout=10) == 143
        _wait(lambda: not _alive(second) and not _alive(int(helpers.read_text().split()[1])))
    finally:
        loop.kill()


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
