{{/*
Names, labels and small helpers. The vLLM sidecar is in _sidecar.tpl; the application spec,
and what the operator-less path (_submit.tpl) shares with it, in _application.tpl; the
metrics proxy and the driver's metrics settings in _metrics.tpl.
*/}}

{{- define "spark-vllm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Full name. Kept to 40 characters: Spark names pods "<app>-driver" and "<app>-exec-<n>", and a
ScheduledSparkApplication names each run "<name>-<19-digit timestamp>", all within 63.
*/}}
{{- define "spark-vllm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spark-vllm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spark-vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spark-vllm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spark-vllm.labels" -}}
helm.sh/chart: {{ include "spark-vllm.chart" . }}
{{ include "spark-vllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spark-vllm
{{- end }}

{{- define "spark-vllm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "spark-vllm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-driver" (include "spark-vllm.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Executors get their own ServiceAccount whose token is never mounted: they do not call the
Kubernetes API, and the operator's pod spec has no automountServiceAccountToken field. */}}
{{- define "spark-vllm.executorServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-executor" (include "spark-vllm.fullname" .)) .Values.serviceAccount.executorName }}
{{- else }}
{{- required "serviceAccount.executorName is required when serviceAccount.create is false" .Values.serviceAccount.executorName }}
{{- end }}
{{- end }}

{{- define "spark-vllm.jobConfigMapName" -}}
{{- printf "%s-job" (include "spark-vllm.fullname" .) }}
{{- end }}

{{- define "spark-vllm.modelClaimName" -}}
{{- default (printf "%s-model-cache" (include "spark-vllm.fullname" .)) .Values.model.cache.pvc.claimName }}
{{- end }}
