{{/*
Names, labels and the pieces shared by the SparkApplication and the ScheduledSparkApplication.
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

{{- define "spark-vllm.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag }}
{{- printf "%s:%s" $repo $tag }}
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

{{/* GPUs held by one sidecar: gpu.count (0: a CPU sidecar). */}}
{{- define "spark-vllm.sidecarGpus" -}}
{{- int .Values.sidecar.gpu.count }}
{{- end }}

{{/* vLLM's --tensor-parallel-size: the value set, else one rank per GPU of the sidecar. */}}
{{- define "spark-vllm.tensorParallelSize" -}}
{{- $gpus := int (include "spark-vllm.sidecarGpus" .) }}
{{- $tp := .Values.sidecar.vllm.tensorParallelSize }}
{{- if kindIs "invalid" $tp }}
{{- max 1 $gpus }}
{{- else if and (gt $gpus 0) (gt (int $tp) $gpus) }}
{{- fail (printf "sidecar.vllm.tensorParallelSize %d needs that many GPUs, but sidecar.gpu.count is %d; raise gpu.count or unset tensorParallelSize (it follows gpu.count)" (int $tp) $gpus) }}
{{- else }}
{{- int $tp }}
{{- end }}
{{- end }}

{{/* /dev/shm in MiB: the value set, else 4 GiB per GPU (NCCL between ranks), at least 1 GiB. */}}
{{- define "spark-vllm.shmSizeMi" -}}
{{- if kindIs "invalid" .Values.sidecar.shmSizeMi }}
{{- max 1024 (mul 4096 (int (include "spark-vllm.sidecarGpus" .))) }}
{{- else }}
{{- int .Values.sidecar.shmSizeMi }}
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

{{/* vLLM's --model: a directory in the cache volume, or a Hugging Face id. */}}
{{- define "spark-vllm.modelArg" -}}
{{- if .Values.model.path }}
{{- if eq .Values.model.cache.type "emptyDir" }}
{{- fail "model.path names a directory in a pre-filled cache: set model.cache.type to pvc or hostPath, or use model.id" }}
{{- end }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.cache.mountPath) (trimPrefix "/" .Values.model.path) }}
{{- else }}
{{- required "set model.id (a Hugging Face id) or model.path (a directory in the model cache)" .Values.model.id }}
{{- end }}
{{- end }}

{{/* The job spec with the sidecar's endpoint filled in where the user left it out. */}}
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

{{/* The vLLM server container. */}}
{{- define "spark-vllm.sidecar" -}}
{{- $gpus := int (include "spark-vllm.sidecarGpus" .) }}
{{- $v := .Values.sidecar.vllm }}
{{- $probe := printf "import urllib.request; urllib.request.urlopen('http://127.0.0.1:%d/health', timeout=5)" (int .Values.sidecar.port) -}}
name: vllm
image: {{ include "spark-vllm.sidecarImage" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if eq .Values.sidecar.mode "native" }}
restartPolicy: Always
command:
  {{- toYaml .Values.sidecar.command | nindent 2 }}
{{- else }}
# Classic sidecar: Spark gives executor pods restartPolicy Never, so the kubelet never
# restarts a container that exits. This loop restarts vLLM when it dies (the executor's
# tasks wait for it, within the job's timeouts.outage_s) and stops it when the pod stops.
command:
  - /bin/bash
  - -c
  - |
    {{- include "spark-vllm.supervisor" . | nindent 4 }}
  - vllm-supervisor
  {{- toYaml .Values.sidecar.command | nindent 2 }}
{{- end }}
args:
  - --model
  - {{ include "spark-vllm.modelArg" . | quote }}
  - --served-model-name
  - {{ .Values.model.servedName | quote }}
  - --host
  - "127.0.0.1"
  - --port
  - {{ .Values.sidecar.port | quote }}
  - --dtype
  - {{ $v.dtype | quote }}
  - --tensor-parallel-size
  - {{ include "spark-vllm.tensorParallelSize" . | quote }}
  - --max-num-seqs
  - {{ $v.maxNumSeqs | quote }}
{{- if not (kindIs "invalid" $v.gpuMemoryUtilization) }}
  - --gpu-memory-utilization
  - {{ $v.gpuMemoryUtilization | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.maxModelLen) }}
  - --max-model-len
  - {{ $v.maxModelLen | quote }}
{{- end }}
{{- $runner := $v.runner | default (eq (toString (dig "task" "" .Values.job)) "embedding" | ternary "pooling" "") }}
{{- if $runner }}
  - --runner
  - {{ $runner | quote }}
{{- end }}
{{- range $v.extraArgs }}
  - {{ . | quote }}
{{- end }}
env:
  # The root filesystem is read-only: caches of vLLM, torch and triton go to /tmp.
  - name: HOME
    value: /tmp
  - name: HF_HOME
    value: {{ printf "%s/huggingface" (trimSuffix "/" .Values.model.cache.mountPath) | quote }}
  - name: VLLM_NO_USAGE_STATS
    value: "1"
{{- if .Values.model.offline }}
  - name: HF_HUB_OFFLINE
    value: "1"
{{- end }}
{{- if .Values.model.hfToken.secretName }}
  - name: HF_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ .Values.model.hfToken.secretName }}
        key: {{ .Values.model.hfToken.key }}
{{- end }}
{{- if .Values.sidecar.apiKey.enabled }}
  # vLLM reads its --api-key from VLLM_API_KEY: the key never appears in the pod spec or argv.
  - name: VLLM_API_KEY
    valueFrom:
      secretKeyRef:
        name: {{ required "sidecar.apiKey.secretName is required when sidecar.apiKey.enabled" .Values.sidecar.apiKey.secretName }}
        key: {{ .Values.sidecar.apiKey.key }}
{{- end }}
{{- with .Values.sidecar.env }}
  {{- toYaml . | nindent 2 }}
{{- end }}
resources:
  requests:
    cpu: {{ .Values.sidecar.cpu | quote }}
    memory: {{ printf "%dMi" (int .Values.sidecar.memoryMi) }}
{{- if gt $gpus 0 }}
    {{ .Values.sidecar.gpu.resourceName }}: {{ $gpus | quote }}
{{- end }}
  limits:
    memory: {{ printf "%dMi" (int .Values.sidecar.memoryMi) }}
{{- if gt $gpus 0 }}
    # The operator's executor.gpu field would put GPUs on the Spark container only.
    {{ .Values.sidecar.gpu.resourceName }}: {{ $gpus | quote }}
{{- end }}
# vLLM listens on loopback only, which the kubelet's httpGet probes (sent to the pod IP)
# cannot reach: the probes run inside the container instead.
startupProbe:
  exec:
    command:
      - python3
      - -c
      - {{ $probe | quote }}
  periodSeconds: 10
  timeoutSeconds: 8
  failureThreshold: {{ div (add (int .Values.sidecar.startupTimeoutSeconds) 9) 10 }}
readinessProbe:
  exec:
    command:
      - python3
      - -c
      - {{ $probe | quote }}
  periodSeconds: 10
  timeoutSeconds: 8
  failureThreshold: 3
{{- if eq .Values.sidecar.mode "native" }}
livenessProbe:
  exec:
    command:
      - python3
      - -c
      - {{ $probe | quote }}
  periodSeconds: 30
  timeoutSeconds: 8
  failureThreshold: 4
{{- end }}
{{- /* No liveness probe for a classic sidecar: in a pod with restartPolicy Never a failed
liveness probe kills vLLM for good, and while the loop above restarts vLLM (minutes for a
big model) the probe would fail. */}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: dshm
    mountPath: /dev/shm
  - name: model-cache
    mountPath: {{ .Values.model.cache.mountPath }}
    readOnly: {{ .Values.model.cache.readOnly }}
{{- end }}

{{/* The classic sidecar's restart loop ("$@" is sidecar.command followed by its args). */}}
{{- define "spark-vllm.supervisor" -}}
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; pkill -KILL -s "$child"; exit 143' TERM INT
while true; do
  setsid "$@" & child=$!
  wait "$child"
  status=$?
  # vLLM's engine processes outlive a server that was killed, holding the memory the next
  # one needs: end everything in the session it was started in. TERM first, so Python's
  # resource tracker (it ignores TERM) outlives them and frees their shared memory.
  pkill -TERM -s "$child"
  for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -s "$child" >/dev/null || break; sleep 1; done
  pkill -KILL -s "$child"
  echo "vllm-supervisor: vLLM exited with status $status; starting it again in 5 s" >&2
  sleep 5 & wait $!
done
{{- end }}

{{/* Volcano PodGroup resources: driver + executors + their sidecars, in Kubernetes units. */}}
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
{{- $cpu := add (int $d.cores) (mul $n (add (int $e.cores) (int .Values.sidecar.cpu))) }}
{{- $driverMem := add (int $d.memoryMi) (int $d.memoryOverheadMi) }}
{{- $executorMem := add (int $e.memoryMi) (int $e.memoryOverheadMi) (int .Values.sidecar.memoryMi) }}
{{- $mem := add $driverMem (mul $n $executorMem) -}}
cpu: {{ $cpu | quote }}
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
{{- with $sparkConf }}
sparkConf:
  {{- range $k, $v := . }}
  {{ $k | quote }}: {{ $v | toString | quote }}
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
  labels:
    {{- toYaml (merge (dict "app.kubernetes.io/component" "driver") $sel .Values.driver.labels) | nindent 4 }}
{{- with .Values.driver.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- if and .Values.volcano.enabled .Values.volcano.priorityClassName }}
  priorityClassName: {{ .Values.volcano.priorityClassName }}
{{- end }}
{{- with .Values.driver.env }}
  env:
    {{- toYaml . | nindent 4 }}
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
    - {{ include "spark-vllm.sidecar" . | nindent 6 | trim }}
{{- else }}
  sidecars:
    - {{ include "spark-vllm.sidecar" . | nindent 6 | trim }}
{{- end }}
{{- end }}
