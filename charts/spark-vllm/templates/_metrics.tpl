{{/*
Prometheus metrics (metrics.enabled): the Secret holding the scrapers' bearer token, the
driver's token variable and port, and the executors' metrics proxy container beside vLLM.
The job spec's metrics keys are filled in by spark-vllm.jobSpec (_application.tpl); the
PodMonitors are in podmonitor.yaml, the dashboard in dashboard.yaml, the scrapers' way in
through the NetworkPolicies in networkpolicy.yaml.
*/}}

{{- define "spark-vllm.metricsTokenSecretName" -}}
{{- required "metrics.tokenSecret.name is required when metrics.enabled: name the Secret (in the release namespace) holding the bearer token Prometheus sends; the chart never creates it" .Values.metrics.tokenSecret.name }}
{{- end }}

{{/* An EnvVar carrying the token from the Secret; called with (dict "name" NAME "root" $). */}}
{{- define "spark-vllm.metricsTokenEnvVar" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "spark-vllm.metricsTokenSecretName" .root }}
      key: {{ .root.Values.metrics.tokenSecret.key }}
{{- end }}

{{/* The variable the driver reads the token from: the rendered job spec's metrics.token_env. */}}
{{- define "spark-vllm.driverTokenEnvName" -}}
{{- get (get (include "spark-vllm.jobSpec" . | fromYaml) "metrics") "token_env" }}
{{- end }}

{{/* What the driver's container gets with metrics, on both paths: the token's variable,
and the named port of its progress endpoint, which serves /metrics. */}}
{{- define "spark-vllm.driverMetricsEnv" -}}
{{- include "spark-vllm.metricsTokenEnvVar" (dict "name" (include "spark-vllm.driverTokenEnvName" .) "root" .) }}
{{- end }}

{{- define "spark-vllm.driverMetricsPorts" -}}
- name: job-metrics
  containerPort: {{ int .Values.metrics.driverPort }}
  protocol: TCP
{{- end }}

{{/* The metrics proxy's requests, in millicores and MiB: counted in the Volcano sum too. */}}
{{- define "spark-vllm.metricsProxyCpuMilli" -}}50{{- end }}
{{- define "spark-vllm.metricsProxyMemoryMi" -}}64{{- end }}

{{/* The metrics proxy (spark_vllm.cluster.metrics_proxy) beside vLLM in each executor pod: vLLM's
loopback /metrics on a pod port, only for the bearer token. It follows sidecar.mode like the
vllm container: native, an init container with restartPolicy Always; classic, a plain one.
Its image is the spark-vllm image (sidecar.image may be a vLLM image without spark_vllm). */}}
{{- define "spark-vllm.metricsProxy" -}}
{{- if eq (int .Values.metrics.sidecarPort) (int .Values.sidecar.port) }}
{{- fail (printf "metrics.sidecarPort %d is sidecar.port, where vLLM listens: choose another port for the metrics proxy" (int .Values.metrics.sidecarPort)) }}
{{- end -}}
name: vllm-metrics
image: {{ include "spark-vllm.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if eq .Values.sidecar.mode "native" }}
restartPolicy: Always
{{- end }}
args:
  - python3
  - -m
  - spark_vllm.cluster.metrics_proxy
  - --listen
  - {{ printf "0.0.0.0:%d" (int .Values.metrics.sidecarPort) | quote }}
  - --upstream
  - {{ printf "http://127.0.0.1:%d/metrics" (int .Values.sidecar.port) | quote }}
  - --token-env
  - SPARK_VLLM_METRICS_TOKEN
ports:
  - name: vllm-metrics
    containerPort: {{ int .Values.metrics.sidecarPort }}
    protocol: TCP
env:
  {{- include "spark-vllm.metricsTokenEnvVar" (dict "name" "SPARK_VLLM_METRICS_TOKEN" "root" .) | nindent 2 }}
resources:
  requests:
    cpu: {{ printf "%sm" (include "spark-vllm.metricsProxyCpuMilli" .) | quote }}
    memory: {{ printf "%sMi" (include "spark-vllm.metricsProxyMemoryMi" .) }}
  limits:
    memory: 128Mi
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end }}
