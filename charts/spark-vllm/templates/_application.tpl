{{/*
The application: the job spec it runs, its volumes, Volcano's resources, and the spec shared by
the SparkApplication and the ScheduledSparkApplication's template. The operator-less path
(_submit.tpl) mounts the same job spec and gives executor pods the same volumes.
*/}}

{{- /*
The driver's guard on the job spec's spark.conf (cli.check_chart_conf): its presence says the
chart started the driver; its value, the guarded keys the release allows, as a JSON list (never
an empty string: the API server of Kubernetes 1.20 stores a CRD's "" as null, and the
SparkApplication's schema then refuses it).
*/}}
{{- define "spark-vllm.driverConfEnv" -}}
- name: SPARK_VLLM_JOB_SPARK_CONF_ALLOWED
  value: {{ .Values.jobSparkConfAllowed | toJson | quote }}
{{- end }}

{{/* The job spec with the sidecar's endpoint filled in where the user left it out, and with
metrics.enabled the driver's metrics (the token's variable, the port the PodMonitor and the
NetworkPolicy name). */}}
{{- define "spark-vllm.jobSpec" -}}
{{- $job := deepCopy .Values.job }}
{{- if not (hasKey $job "input") }}
{{- fail "job.input is required: the job spec must say what to read (see examples/values/chat.yaml)" }}
{{- end }}
{{- if not (hasKey $job "output") }}
{{- fail "job.output is required: the job spec must say where to write (see examples/values/chat.yaml)" }}
{{- end }}
{{- $endpoint := dict "base_url" (printf "http://127.0.0.1:%d/v1" (int .Values.sidecar.port)) "model" .Values.model.servedName }}
{{- if .Values.sidecar.apiKey.enabled }}
{{- $_ := set $endpoint "api_key_env" .Values.sidecar.apiKey.envName }}
{{- end }}
{{- $userEndpoint := default (dict) $job.endpoint }}
{{- $_ := set $job "endpoint" (mergeOverwrite $endpoint $userEndpoint) }}
{{- if and (hasKey $job "budget") (ne .Values.restartPolicy.type "Never") }}
{{- fail (printf "job.budget with restartPolicy.type %s: a run that stops at its budget exits 3, which counts as a failure, and every resubmission would spend a new budget; set restartPolicy.type Never" .Values.restartPolicy.type) }}
{{- end }}
{{- if .Values.metrics.enabled }}
{{- $_ := include "spark-vllm.metricsTokenSecretName" . }}
{{- $metrics := deepCopy (default (dict) $job.metrics) }}
{{- if not (hasKey $metrics "enabled") }}
{{- $_ := set $metrics "enabled" true }}
{{- end }}
{{- if not (hasKey $metrics "token_env") }}
{{- $_ := set $metrics "token_env" "SPARK_VLLM_METRICS_TOKEN" }}
{{- end }}
{{- if not $metrics.enabled }}
{{- fail "job.metrics.enabled is false but metrics.enabled is true: the PodMonitor would scrape a driver that serves no metrics; leave job.metrics.enabled out" }}
{{- end }}
{{- $_ := set $job "metrics" $metrics }}
{{- $progress := deepCopy (default (dict) $job.progress) }}
{{- if not (hasKey $progress "port") }}
{{- $_ := set $progress "port" (int .Values.metrics.driverPort) }}
{{- end }}
{{- if ne (int $progress.port) (int .Values.metrics.driverPort) }}
{{- fail (printf "job.progress.port %d differs from metrics.driverPort %d, the driver's container port that the PodMonitor and the NetworkPolicy name: leave job.progress.port out and set metrics.driverPort" (int $progress.port) (int .Values.metrics.driverPort)) }}
{{- end }}
{{- $_ := set $job "progress" $progress }}
{{- end }}
{{- toYaml $job }}
{{- end }}

{{/* Volumes of the application. Executor-side ones are named in executor.volumeMounts too:
the operator's webhook adds a volume to a pod only when the Spark container mounts it. */}}
{{- define "spark-vllm.volumes" -}}
- name: job-spec
  configMap:
    name: {{ include "spark-vllm.jobConfigMapName" . }}
{{ include "spark-vllm.executorVolumes" . }}
{{- end }}

{{/* The executor pod's volumes: /tmp, the sidecar's /dev/shm and model cache. */}}
{{- define "spark-vllm.executorVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ printf "%dMi" (int .Values.tmpSizeMi) }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ printf "%dMi" (int (include "spark-vllm.shmSizeMi" .)) }}
- name: model-cache
{{- if eq .Values.model.cache.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "spark-vllm.modelClaimName" . }}
    readOnly: {{ .Values.model.cache.readOnly }}
{{- else if eq .Values.model.cache.type "hostPath" }}
  hostPath:
    path: {{ .Values.model.cache.hostPath.path }}
    type: {{ .Values.model.cache.hostPath.type }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.cache.emptyDir.sizeLimit }}
{{- end }}
{{- end }}

{{/* Executors the job starts with: what Volcano must fit before admitting it. */}}
{{- define "spark-vllm.startExecutors" -}}
{{- if .Values.dynamicAllocation.enabled }}
{{- max (int .Values.dynamicAllocation.initialExecutors) (int .Values.dynamicAllocation.minExecutors) }}
{{- else }}
{{- int .Values.executor.instances }}
{{- end }}
{{- end }}

{{/* A Kubernetes CPU quantity ("300m", "0.5", "2", or a number) in millicores. */}}
{{- define "spark-vllm.milliCores" -}}
{{- $q := toString . }}
{{- if hasSuffix "m" $q }}
{{- int (trimSuffix "m" $q) }}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?$" $q }}
{{- int (round (mulf (float64 $q) 1000) 0) }}
{{- else }}
{{- fail (printf "a CPU quantity such as \"300m\", \"0.5\" or \"2\" was expected, got %q" $q) }}
{{- end }}
{{- end }}

{{/* CPU millicores a driver or executor pod's Spark container requests: what Spark asks for,
spark.kubernetes.<role>.request.cores in sparkConf when set, else <role>.cores. */}}
{{- define "spark-vllm.sparkCpuMilli" -}}
{{- $root := index . 0 }}
{{- $role := index . 1 }}
{{- $key := printf "spark.kubernetes.%s.request.cores" $role }}
{{- if hasKey $root.Values.sparkConf $key }}
{{- include "spark-vllm.milliCores" (index $root.Values.sparkConf $key) }}
{{- else }}
{{- mul (int (index $root.Values $role).cores) 1000 }}
{{- end }}
{{- end }}

{{/* Volcano PodGroup resources: driver + executors + their sidecars, in Kubernetes units. CPU
counts what the pods request (a request.cores in sparkConf included): whole cores when the sum
is whole, else millicores. */}}
{{- define "spark-vllm.volcanoResources" -}}
{{- if .Values.volcano.resources }}
{{- toYaml .Values.volcano.resources }}
{{- else }}
{{- $n := int (include "spark-vllm.startExecutors" .) }}
{{- $gpus := int (include "spark-vllm.sidecarGpus" .) }}
{{- if .Values.rapids.enabled }}
{{- $gpus = add $gpus (int .Values.rapids.executorGpus) }}
{{- end }}
{{- $d := .Values.driver }}
{{- $e := .Values.executor }}
{{- $executorMilli := add (int (include "spark-vllm.sparkCpuMilli" (list . "executor"))) (int (include "spark-vllm.milliCores" .Values.sidecar.cpu)) }}
{{- $driverMem := add (int $d.memoryMi) (int $d.memoryOverheadMi) }}
{{- $executorMem := add (int $e.memoryMi) (int $e.memoryOverheadMi) (int .Values.sidecar.memoryMi) }}
{{- if .Values.metrics.enabled }}
{{- /* the metrics proxy beside each sidecar */}}
{{- $executorMem = add $executorMem (int (include "spark-vllm.metricsProxyMemoryMi" .)) }}
{{- $executorMilli = add $executorMilli (int (include "spark-vllm.metricsProxyCpuMilli" .)) }}
{{- end }}
{{- $milli := add (int (include "spark-vllm.sparkCpuMilli" (list . "driver"))) (mul $n $executorMilli) }}
{{- $cpuText := printf "%dm" $milli }}
{{- if eq (mod $milli 1000) 0 }}
{{- $cpuText = toString (div $milli 1000) }}
{{- end }}
{{- $mem := add $driverMem (mul $n $executorMem) -}}
cpu: {{ $cpuText | quote }}
memory: {{ printf "%dMi" $mem }}
{{- if gt $gpus 0 }}
{{ .Values.sidecar.gpu.resourceName }}: {{ mul $n $gpus | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The application spec, shared by SparkApplication and ScheduledSparkApplication.template. */}}
{{- define "spark-vllm.appSpec" -}}
{{- $sel := include "spark-vllm.selectorLabels" . | fromYaml -}}
type: Python
mode: cluster
sparkVersion: {{ .Values.sparkVersion | quote }}
image: {{ include "spark-vllm.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
mainApplicationFile: {{ .Values.mainApplicationFile }}
arguments:
  - {{ printf "%s/job.yaml" (trimSuffix "/" .Values.jobMountPath) | quote }}
{{- range .Values.extraArgs }}
  - {{ . | quote }}
{{- end }}
{{- $sparkConf := deepCopy .Values.sparkConf }}
{{- if .Values.rapids.enabled }}
{{- $jar := .Values.rapids.jar }}
{{- $rapids := dict "spark.plugins" "com.nvidia.spark.SQLPlugin" "spark.driver.extraClassPath" $jar "spark.executor.extraClassPath" $jar "spark.executor.resource.gpu.amount" (toString .Values.rapids.executorGpus) "spark.executor.resource.gpu.vendor" "nvidia.com" "spark.executor.resource.gpu.discoveryScript" .Values.rapids.discoveryScript "spark.task.resource.gpu.amount" (printf "%g" (divf (float64 .Values.rapids.executorGpus) (float64 .Values.executor.cores))) }}
{{- $sparkConf = merge $sparkConf $rapids }}
{{- end }}
{{- include "spark-vllm.driverReach" $sparkConf }}
{{- with $sparkConf }}
sparkConf:
  {{- range $k, $v := . }}
  {{- if gt (len (toString $v)) 60 }}
  {{- /* A long value (a list of classes) on a line of its own: no line over 120 characters. */}}
  {{ $k | quote }}:
    {{ $v | toString | quote }}
  {{- else }}
  {{ $k | quote }}: {{ $v | toString | quote }}
  {{- end }}
  {{- end }}
{{- end }}
{{- with .Values.hadoopConf }}
hadoopConf:
  {{- range $k, $v := . }}
  {{ $k | quote }}: {{ $v | toString | quote }}
  {{- end }}
{{- end }}
{{- if not (kindIs "invalid" .Values.timeToLiveSeconds) }}
timeToLiveSeconds: {{ int .Values.timeToLiveSeconds }}
{{- end }}
restartPolicy:
  type: {{ .Values.restartPolicy.type }}
{{- if eq .Values.restartPolicy.type "OnFailure" }}
  onFailureRetries: {{ int .Values.restartPolicy.onFailureRetries }}
  onFailureRetryInterval: {{ int .Values.restartPolicy.onFailureRetryInterval }}
  onSubmissionFailureRetries: {{ int .Values.restartPolicy.onSubmissionFailureRetries }}
  onSubmissionFailureRetryInterval: {{ int .Values.restartPolicy.onSubmissionFailureRetryInterval }}
{{- end }}
{{- if .Values.volcano.enabled }}
batchScheduler: volcano
batchSchedulerOptions:
  queue: {{ .Values.volcano.queue }}
{{- with .Values.volcano.priorityClassName }}
  priorityClassName: {{ . }}
{{- end }}
  resources:
    {{- include "spark-vllm.volcanoResources" . | nindent 4 }}
{{- end }}
{{- if .Values.dynamicAllocation.enabled }}
dynamicAllocation:
  enabled: true
  initialExecutors: {{ int .Values.dynamicAllocation.initialExecutors }}
  minExecutors: {{ int .Values.dynamicAllocation.minExecutors }}
  maxExecutors: {{ int .Values.dynamicAllocation.maxExecutors }}
  # Kubernetes has no external shuffle service: executors keep their shuffle files.
  shuffleTrackingEnabled: true
{{- if not (kindIs "invalid" .Values.dynamicAllocation.shuffleTrackingTimeout) }}
  shuffleTrackingTimeout: {{ int .Values.dynamicAllocation.shuffleTrackingTimeout }}
{{- end }}
{{- end }}
volumes:
  {{- include "spark-vllm.volumes" . | nindent 2 }}
driver:
  cores: {{ int .Values.driver.cores }}
  memory: {{ printf "%dm" (int .Values.driver.memoryMi) | quote }}
  memoryOverhead: {{ printf "%dm" (int .Values.driver.memoryOverheadMi) | quote }}
  serviceAccount: {{ include "spark-vllm.serviceAccountName" . }}
  {{- with .Values.submitter.apiServer }}
  # The driver's own client (it creates the executors); spark-submit's is the operator's.
  # The operator's webhook refuses spark.kubernetes.driver.master in sparkConf.
  kubernetesMaster: {{ . | quote }}
  {{- end }}
  {{- include "spark-vllm.podTemplateForTheWebhook" (list . "driver") | nindent 2 }}
  labels:
    {{- toYaml (merge (dict "app.kubernetes.io/component" "driver") $sel .Values.driver.labels) | nindent 4 }}
{{- with .Values.driver.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- if and .Values.volcano.enabled .Values.volcano.priorityClassName }}
  priorityClassName: {{ .Values.volcano.priorityClassName }}
{{- end }}
  env:
    {{- include "spark-vllm.driverConfEnv" . | nindent 4 }}
{{- with .Values.driver.env }}
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- if .Values.metrics.enabled }}
    {{- include "spark-vllm.driverMetricsEnv" . | nindent 4 }}
{{- end }}
{{- if .Values.metrics.enabled }}
  # The operator's webhook puts these on the Spark container.
  ports:
    {{- include "spark-vllm.driverMetricsPorts" . | nindent 4 }}
{{- end }}
{{- with .Values.driver.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- with .Values.driver.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
{{- end }}
  podSecurityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: job-spec
      mountPath: {{ .Values.jobMountPath }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
executor:
{{- if not .Values.dynamicAllocation.enabled }}
  instances: {{ int .Values.executor.instances }}
{{- end }}
  cores: {{ int .Values.executor.cores }}
  memory: {{ printf "%dm" (int .Values.executor.memoryMi) | quote }}
  memoryOverhead: {{ printf "%dm" (int .Values.executor.memoryOverheadMi) | quote }}
{{- if .Values.rapids.enabled }}
  gpu:
    name: {{ .Values.sidecar.gpu.resourceName }}
    quantity: {{ int .Values.rapids.executorGpus }}
{{- end }}
  deleteOnTermination: {{ .Values.executor.deleteOnTermination }}
  serviceAccount: {{ include "spark-vllm.executorServiceAccountName" . }}
  {{- include "spark-vllm.podTemplateForTheWebhook" (list . "executor") | nindent 2 }}
  labels:
    {{- toYaml (merge (dict "app.kubernetes.io/component" "executor") $sel .Values.executor.labels) | nindent 4 }}
{{- with .Values.executor.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- if and .Values.volcano.enabled .Values.volcano.priorityClassName }}
  priorityClassName: {{ .Values.volcano.priorityClassName }}
{{- end }}
{{- if or .Values.executor.env .Values.sidecar.apiKey.enabled }}
  env:
{{- with .Values.executor.env }}
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- if .Values.sidecar.apiKey.enabled }}
    - name: {{ .Values.sidecar.apiKey.envName }}
      valueFrom:
        secretKeyRef:
          name: {{ .Values.sidecar.apiKey.secretName }}
          key: {{ .Values.sidecar.apiKey.key }}
{{- end }}
{{- end }}
{{- with .Values.executor.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- with .Values.executor.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
{{- end }}
  podSecurityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  # Every volume of the executor pod is listed here, the sidecar's too: the operator's webhook
  # adds a volume to the pod only when the Spark container mounts it.
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: dshm
      mountPath: /dev/shm
    - name: model-cache
      mountPath: {{ .Values.model.cache.mountPath }}
      readOnly: true
{{- if eq .Values.sidecar.mode "native" }}
  initContainers:
{{- else }}
  sidecars:
{{- end }}
    - {{ include "spark-vllm.sidecar" . | nindent 6 | trim }}
{{- if .Values.metrics.enabled }}
    - {{ include "spark-vllm.metricsProxy" . | nindent 6 | trim }}
{{- end }}
{{- end }}

{{/* A Spark pod template that names only the namespace and the Spark container, so that Spark
sends the pod's namespace in the body of its create request. The operator's pod webhook
(v2.5.2) reads the namespace from the pod itself, not from the request; Spark 4.2 creates its
pods without one, and the webhook then passes them unmutated: no vLLM sidecar, no volumes
(seen on the cluster tier with the real operator). Everything else stays the webhook's.
Arguments: (list $ "driver"|"executor"). */}}
{{- define "spark-vllm.podTemplateForTheWebhook" -}}
{{- $ := index . 0 }}
{{- $role := index . 1 -}}
template:
  metadata:
    namespace: {{ $.Release.Namespace }}
  spec:
    containers:
      - name: {{ printf "spark-kubernetes-%s" $role }}
{{- end }}
