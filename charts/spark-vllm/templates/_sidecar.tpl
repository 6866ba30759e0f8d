{{/*
The vLLM sidecar of each executor pod: its container (native or classic), the classic
sidecar's restart loop, and what its arguments and resources derive from (image, GPUs, tensor
parallel size, /dev/shm, --model). The SparkApplication lists it in executor.initContainers or
executor.sidecars (_application.tpl), the operator-less path in its executor pod template.
*/}}

{{- define "spark-vllm.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag }}
{{- printf "%s:%s" $repo $tag }}
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

{{/* vLLM's LoRA arguments (sidecar.vllm.lora), as items of the container's args. */}}
{{- define "spark-vllm.loraArgs" -}}
{{- $lora := .Values.sidecar.vllm.lora }}
{{- if $lora.enabled }}
{{- if and (not (kindIs "invalid" $lora.maxCpuLoras)) (lt (int $lora.maxCpuLoras) (int $lora.maxLoras)) }}
{{- fail (printf "sidecar.vllm.lora.maxCpuLoras %d is below maxLoras %d, which vLLM refuses: raise maxCpuLoras or unset it (it follows maxLoras)" (int $lora.maxCpuLoras) (int $lora.maxLoras)) }}
{{- end }}
  - --enable-lora
  - {{ printf "--max-loras=%d" (int $lora.maxLoras) | quote }}
  - {{ printf "--max-lora-rank=%d" (int $lora.maxLoraRank) | quote }}
{{- if not (kindIs "invalid" $lora.maxCpuLoras) }}
  - {{ printf "--max-cpu-loras=%d" (int $lora.maxCpuLoras) | quote }}
{{- end }}
{{- with $lora.adapters }}
{{- $names := list }}
  - --lora-modules
{{- range . }}
{{- if has .name $names }}
{{- fail (printf "sidecar.vllm.lora.adapters names %s twice; each adapter needs its own name" .name) }}
{{- end }}
{{- $names = append $names .name }}
  - {{ printf "%s=%s" .name .path | quote }}
{{- end }}
{{- end }}
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
{{- if not (kindIs "invalid" $v.prefixCaching) }}
  - {{ ternary "--enable-prefix-caching" "--no-enable-prefix-caching" $v.prefixCaching }}
{{- end }}
{{- $runner := $v.runner | default (eq (toString (dig "task" "" (default (dict) .Values.job))) "embedding" | ternary "pooling" "") }}
{{- if $runner }}
  - --runner
  - {{ $runner | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.limitMmPerPrompt) }}
  - {{ printf "--limit-mm-per-prompt=%s" (toJson $v.limitMmPerPrompt) | quote }}
{{- end }}
{{- /* vLLM fetches a row's http(s) image URL only from these hosts; with none listed, from
a host that cannot exist (the reserved .invalid domain), so a row cannot make the sidecar
request an internal address. --allowed-local-media-path stays unset: no file:// URLs. */}}
  - --allowed-media-domains
{{- range (default (list "no-remote-media.invalid") $v.allowedMediaDomains) }}
  - {{ . | quote }}
{{- end }}
{{- include "spark-vllm.loraArgs" . }}
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
  # An allowed media host must not redirect vLLM to another one.
  - name: VLLM_MEDIA_URL_ALLOW_REDIRECTS
    value: "0"
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
{{- if $v.lora.runtimeLoading }}
  # Lets the job load the adapters its lora.modules names (POST /v1/load_lora_adapter);
  # vLLM listens on loopback, so only this pod's containers can.
  - name: VLLM_ALLOW_RUNTIME_LORA_UPDATING
    value: "True"
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
