{{/*
The operator-less path (operator.enabled false): what the Spark Operator would otherwise turn
the SparkApplication into, rendered by the chart itself. A Job runs `spark-submit` in cluster
mode with a properties file (the Spark configuration the operator derives from the
SparkApplication's fields) and two Spark pod templates (the settings the operator's webhook
would add to the pods: security contexts, env, volumes, the vLLM sidecar).
*/}}

{{- define "spark-vllm.submitName" -}}
{{- printf "%s-submit" (include "spark-vllm.fullname" .) }}
{{- end }}

{{/* The driver pod's name; the submitter replaces a finished driver of the same name. */}}
{{- define "spark-vllm.driverPodName" -}}
{{- printf "%s-driver" (include "spark-vllm.fullname" .) }}
{{- end }}

{{- define "spark-vllm.submitMountPath" -}}
{{- printf "%s/submit" (trimSuffix "/" .Values.jobMountPath) }}
{{- end }}

{{/* Features of the operator path that this path does not carry: refused, not dropped. */}}
{{- define "spark-vllm.submitChecks" -}}
{{- if .Values.schedule.cron }}
{{- fail "schedule.cron needs the Spark Operator (a ScheduledSparkApplication): set operator.enabled=true, or run this chart's Job from your own scheduler" }}
{{- end }}
{{- if .Values.volcano.enabled }}
{{- fail "volcano.enabled needs the Spark Operator (it creates the PodGroup): set operator.enabled=true" }}
{{- end }}
{{- if eq .Values.restartPolicy.type "Always" }}
{{- fail "restartPolicy.type Always has no operator-less form: use Never or OnFailure (the Job's backoffLimit)" }}
{{- end }}
{{- end }}

{{/* Spark's configuration, as the operator derives it from the SparkApplication (v2.5:
submission.go), plus the pod templates. A dict of strings. */}}
{{- define "spark-vllm.sparkProperties" -}}
{{- $mount := include "spark-vllm.submitMountPath" . }}
{{- $p := dict
  "spark.app.name" (include "spark-vllm.fullname" .)
  "spark.kubernetes.namespace" .Release.Namespace
  "spark.kubernetes.container.image" (include "spark-vllm.image" .)
  "spark.kubernetes.container.image.pullPolicy" .Values.image.pullPolicy
  "spark.kubernetes.authenticate.driver.serviceAccountName" (include "spark-vllm.serviceAccountName" .)
  "spark.kubernetes.authenticate.executor.serviceAccountName" (include "spark-vllm.executorServiceAccountName" .)
  "spark.kubernetes.driver.podTemplateFile" (printf "%s/driver-template.yaml" $mount)
  "spark.kubernetes.executor.podTemplateFile" (printf "%s/executor-template.yaml" $mount)
  "spark.kubernetes.driver.podTemplateContainerName" "spark-kubernetes-driver"
  "spark.kubernetes.executor.podTemplateContainerName" "spark-kubernetes-executor"
  "spark.kubernetes.submission.waitAppCompletion" "true"
  "spark.driver.cores" (toString (int .Values.driver.cores))
  "spark.driver.memory" (printf "%dm" (int .Values.driver.memoryMi))
  "spark.driver.memoryOverhead" (printf "%dm" (int .Values.driver.memoryOverheadMi))
  "spark.executor.cores" (toString (int .Values.executor.cores))
  "spark.executor.memory" (printf "%dm" (int .Values.executor.memoryMi))
  "spark.executor.memoryOverhead" (printf "%dm" (int .Values.executor.memoryOverheadMi))
  "spark.kubernetes.executor.deleteOnTermination" (toString .Values.executor.deleteOnTermination)
}}
{{- with .Values.image.pullSecrets }}
{{- $_ := set $p "spark.kubernetes.container.image.pullSecrets" (join "," .) }}
{{- end }}
{{- if .Values.dynamicAllocation.enabled }}
{{- $d := .Values.dynamicAllocation }}
{{- $_ := set $p "spark.dynamicAllocation.enabled" "true" }}
{{- $_ := set $p "spark.dynamicAllocation.shuffleTracking.enabled" "true" }}
{{- $_ := set $p "spark.dynamicAllocation.initialExecutors" (toString (int $d.initialExecutors)) }}
{{- $_ := set $p "spark.dynamicAllocation.minExecutors" (toString (int $d.minExecutors)) }}
{{- $_ := set $p "spark.dynamicAllocation.maxExecutors" (toString (int $d.maxExecutors)) }}
{{- if not (kindIs "invalid" $d.shuffleTrackingTimeout) }}
{{- $_ := set $p "spark.dynamicAllocation.shuffleTracking.timeout" (printf "%dms" (int $d.shuffleTrackingTimeout)) }}
{{- end }}
{{- else }}
{{- $_ := set $p "spark.executor.instances" (toString (int .Values.executor.instances)) }}
{{- end }}
{{- range $k, $v := .Values.hadoopConf }}
{{- $_ := set $p (printf "spark.hadoop.%s" $k) (toString $v) }}
{{- end }}
{{- if .Values.rapids.enabled }}
{{- $jar := .Values.rapids.jar }}
{{- $_ := merge $p (dict "spark.plugins" "com.nvidia.spark.SQLPlugin" "spark.driver.extraClassPath" $jar "spark.executor.extraClassPath" $jar "spark.executor.resource.gpu.amount" (toString .Values.rapids.executorGpus) "spark.executor.resource.gpu.vendor" "nvidia.com" "spark.executor.resource.gpu.discoveryScript" .Values.rapids.discoveryScript "spark.task.resource.gpu.amount" (printf "%g" (divf (float64 .Values.rapids.executorGpus) (float64 .Values.executor.cores)))) }}
{{- end }}
{{- range $k, $v := .Values.sparkConf }}
{{- $_ := set $p $k (toString $v) }}
{{- end }}
{{- include "spark-vllm.driverReach" $p }}
{{- toYaml $p }}
{{- end }}

{{/* The driver pod template: what the operator's webhook would add to the driver. */}}
{{- define "spark-vllm.driverTemplate" -}}
{{- $sel := include "spark-vllm.selectorLabels" . | fromYaml -}}
apiVersion: v1
kind: Pod
metadata:
  labels:
    {{- toYaml (merge (dict "app.kubernetes.io/component" "driver") $sel .Values.driver.labels) | nindent 4 }}
{{- with .Values.driver.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
spec:
  # The driver creates, watches and deletes its executors through the Kubernetes API.
  automountServiceAccountToken: true
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
{{- with .Values.driver.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- with .Values.driver.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
{{- end }}
  containers:
    - name: spark-kubernetes-driver
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      env:
        {{- include "spark-vllm.driverConfEnv" . | nindent 8 }}
{{- with .Values.driver.env }}
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- if .Values.metrics.enabled }}
        {{- include "spark-vllm.driverMetricsEnv" . | nindent 8 }}
{{- end }}
{{- if .Values.metrics.enabled }}
      # Spark adds its own ports (RPC, block manager, UI) to these.
      ports:
        {{- include "spark-vllm.driverMetricsPorts" . | nindent 8 }}
{{- end }}
      volumeMounts:
        - name: job-spec
          mountPath: {{ .Values.jobMountPath }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: job-spec
      configMap:
        name: {{ include "spark-vllm.jobConfigMapName" . }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ printf "%dMi" (int .Values.tmpSizeMi) }}
{{- end }}

{{/* The executor pod template: the Spark container and the vLLM sidecar beside it. */}}
{{- define "spark-vllm.executorTemplate" -}}
{{- $sel := include "spark-vllm.selectorLabels" . | fromYaml -}}
apiVersion: v1
kind: Pod
metadata:
  labels:
    {{- toYaml (merge (dict "app.kubernetes.io/component" "executor") $sel .Values.executor.labels) | nindent 4 }}
{{- with .Values.executor.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
spec:
  # Executors never call the Kubernetes API: no token in their pods.
  automountServiceAccountToken: false
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
{{- with .Values.executor.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- with .Values.executor.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- if eq .Values.sidecar.mode "native" }}
  initContainers:
    - {{ include "spark-vllm.sidecar" . | nindent 6 | trim }}
{{- if .Values.metrics.enabled }}
    - {{ include "spark-vllm.metricsProxy" . | nindent 6 | trim }}
{{- end }}
{{- end }}
  containers:
    - name: spark-kubernetes-executor
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
{{- if or .Values.executor.env .Values.sidecar.apiKey.enabled }}
      env:
{{- with .Values.executor.env }}
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- if .Values.sidecar.apiKey.enabled }}
        - name: {{ .Values.sidecar.apiKey.envName }}
          valueFrom:
            secretKeyRef:
              name: {{ .Values.sidecar.apiKey.secretName }}
              key: {{ .Values.sidecar.apiKey.key }}
{{- end }}
{{- end }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
{{- if eq .Values.sidecar.mode "classic" }}
    - {{ include "spark-vllm.sidecar" . | nindent 6 | trim }}
{{- if .Values.metrics.enabled }}
    - {{ include "spark-vllm.metricsProxy" . | nindent 6 | trim }}
{{- end }}
{{- end }}
  volumes:
    {{- include "spark-vllm.executorVolumes" . | nindent 4 }}
{{- end }}

{{/* How executors reach the driver, on both paths; sets into the dict of Spark properties
given, unless it names them already. Executors dial the driver's pod IP
(spark.kubernetes.executor.useDriverPodIP), and two of Spark 4's own driver steps are left
out, unless the properties name the steps:
- the headless Service for the driver: executors reach the driver at its pod IP, so it
  serves nothing, and Kubernetes < 1.21 refuse the server-side apply Spark creates it with
  (".spec.ports: element 0: associative list with keys has an element that omits key field
  protocol");
- the NetworkPolicy Spark makes for the executors: the chart's own (networkPolicy.enabled)
  admits the same pods, and the driver's Role then needs no rights on NetworkPolicies. */}}
{{- define "spark-vllm.driverReach" -}}
{{- $p := . }}
{{- if not (hasKey $p "spark.kubernetes.executor.useDriverPodIP") }}
{{- $_ := set $p "spark.kubernetes.executor.useDriverPodIP" "true" }}
{{- end }}
{{- $stepsKey := "spark.kubernetes.driver.pod.excludedFeatureSteps" }}
{{- if not (hasKey $p $stepsKey) }}
{{- $steps := list "org.apache.spark.deploy.k8s.features.NetworkPolicyFeatureStep" }}
{{- if eq (toString (get $p "spark.kubernetes.executor.useDriverPodIP")) "true" }}
{{- $steps = prepend $steps "org.apache.spark.deploy.k8s.features.DriverServiceFeatureStep" }}
{{- end }}
{{- $_ := set $p $stepsKey (join "," $steps) }}
{{- end }}
{{- end }}
