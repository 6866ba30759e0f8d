{{/*
Notebook mode (notebook.enabled): JupyterLab whose kernels are Spark drivers in client mode.
The kernels get the operator-less path's Spark properties (spark-vllm.sparkProperties,
_submit.tpl) turned into client mode, and its executor pod template (the vLLM sidecar
beside the executor); the image's `notebook` role (docker/notebook.py) adds what only the
running pod knows (the API server, its own name and IP) and starts JupyterLab.
*/}}

{{- define "spark-vllm.notebookName" -}}
{{- printf "%s-notebook" (include "spark-vllm.fullname" .) }}
{{- end }}

{{- define "spark-vllm.notebookSelectorLabels" -}}
{{ include "spark-vllm.selectorLabels" . }}
app.kubernetes.io/component: notebook
{{- end }}

{{/* A notebook release runs no batch job, and what only a batch job has is refused, not dropped. */}}
{{- define "spark-vllm.notebookChecks" -}}
{{- if .Values.job }}
{{- fail "job is set, but notebook.enabled runs no batch job: leave job empty (with a job's values file: --set job=null) and install the job as a release of its own" }}
{{- end }}
{{- if .Values.schedule.cron }}
{{- fail "schedule.cron schedules a batch job, which notebook.enabled does not run: leave schedule.cron empty" }}
{{- end }}
{{- if .Values.volcano.enabled }}
{{- fail "volcano.enabled needs the Spark Operator's PodGroup, which notebook.enabled does not create: set volcano.enabled=false" }}
{{- end }}
{{- if .Values.metrics.enabled }}
{{- fail "metrics.enabled is not available with notebook.enabled (the job's metrics come from a batch driver): set metrics.enabled=false" }}
{{- end }}
{{- if not .Values.notebook.tokenSecret.name }}
{{- fail "notebook.tokenSecret.name is required when notebook.enabled: name the Secret (in the release namespace) holding JupyterLab's token, e.g. kubectl create secret generic spark-vllm-notebook --from-literal=token=$(openssl rand -hex 32); the chart never creates it" }}
{{- end }}
{{- end }}

{{/* The submitter's Spark properties, for a driver in client mode inside the notebook pod:
without what only cluster mode reads (the driver's pod template, its feature steps and
ServiceAccount, waiting for completion), with fixed driver ports (the Service names them)
and the pod's ServiceAccount credentials for talking to the API server. A dict of strings. */}}
{{- define "spark-vllm.notebookSparkProperties" -}}
{{- $p := include "spark-vllm.sparkProperties" . | fromYaml }}
{{- range list "spark.kubernetes.driver.podTemplateFile" "spark.kubernetes.driver.podTemplateContainerName" "spark.kubernetes.submission.waitAppCompletion" "spark.kubernetes.executor.useDriverPodIP" "spark.kubernetes.driver.pod.excludedFeatureSteps" "spark.kubernetes.authenticate.driver.serviceAccountName" "spark.driver.memoryOverhead" }}
{{- $_ := unset $p . }}
{{- end }}
{{- $sa := "/var/run/secrets/kubernetes.io/serviceaccount" }}
{{- $_ := merge $p (dict
  "spark.submit.deployMode" "client"
  "spark.driver.bindAddress" "0.0.0.0"
  "spark.driver.port" (toString (int .Values.notebook.driverPort))
  "spark.driver.blockManager.port" (toString (int .Values.notebook.blockManagerPort))
  "spark.ui.port" (toString (int .Values.notebook.uiPort))
  "spark.kubernetes.authenticate.caCertFile" (printf "%s/ca.crt" $sa)
  "spark.kubernetes.authenticate.oauthTokenFile" (printf "%s/token" $sa)
) }}
{{- range $k, $v := .Values.sparkConf }}
{{- $_ := set $p $k (toString $v) }}
{{- end }}
{{- toYaml $p }}
{{- end }}
