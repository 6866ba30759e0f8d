{{/* Names and labels of the operator's objects. */}}
{{- define "platform.operator.name" -}}
{{- printf "%s-spark-operator" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end }}

{{- define "platform.operator.labels" -}}
app.kubernetes.io/name: spark-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: spark-vllm-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "platform.operator.selector" -}}
app.kubernetes.io/name: spark-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The webhook's Service name; its certificate is made for <this>.<namespace>.svc. */}}
{{- define "platform.operator.webhookService" -}}
{{- printf "%s-webhook" (include "platform.operator.name" .) -}}
{{- end }}

{{/* Container settings both processes share: restricted, read-only root, the API server
override. */}}
{{- define "platform.operator.container" -}}
image: {{ printf "%s:%s" .Values.operator.image.repository .Values.operator.image.tag | quote }}
imagePullPolicy: {{ .Values.operator.image.pullPolicy }}
{{- with .Values.operator.apiServer }}
{{- $u := urlParse . }}
{{- if ne $u.scheme "https" }}
{{- fail (printf "operator.apiServer %q: expected an https:// URL of the Kubernetes API server" .) }}
{{- end }}
{{- $hostPort := splitList ":" $u.host }}
env:
  # The API server's own address: this cluster's Services do not route. The client's
  # in-cluster configuration and the controller's spark-submit both read these.
  - name: KUBERNETES_SERVICE_HOST
    value: {{ first $hostPort | quote }}
  - name: KUBERNETES_SERVICE_PORT
    value: {{ (ge (len $hostPort) 2) | ternary (last $hostPort) "443" | quote }}
{{- end }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
livenessProbe:
  httpGet: {port: 8081, path: /healthz}
readinessProbe:
  httpGet: {port: 8081, path: /readyz}
{{- end }}

{{/* The webhooks' shared fields: the Service, the job namespaces, the failure policy. */}}
{{- define "platform.operator.webhookCommon" -}}
admissionReviewVersions: ["v1"]
sideEffects: None
failurePolicy: {{ .Values.operator.webhook.failurePolicy }}
timeoutSeconds: {{ .Values.operator.webhook.timeoutSeconds }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{ toJson .Values.operator.jobNamespaces }}
{{- end }}
