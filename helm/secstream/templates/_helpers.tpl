{{/* vim: set filetype=mustache: */}}

{{- define "secstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "secstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: <fullname>-<component>, within the 63-character limit. */}}
{{- define "secstream.componentName" -}}
{{- printf "%s-%s" (include "secstream.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "secstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels. Call with (dict "ctx" $ "component" "stream"). */}}
{{- define "secstream.labels" -}}
helm.sh/chart: {{ include "secstream.chart" .ctx }}
{{ include "secstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: secstream
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "secstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "secstream.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end -}}

{{- define "secstream.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "secstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "secstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "secstream.configMapName" -}}
{{- printf "%s-config" (include "secstream.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "secstream.imageRef" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s/%s@%s" .image.registry .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" .image.registry .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------------------
     Partition bounds. Consumers beyond the partition count sit idle, so no replica setting may exceed it.
     ------------------------------------------------------------------------------------------------------------ */}}

{{/* Effective max replicas of a consumer stage. Call with (dict "ctx" $ "stage" "stream" "max" N "partitions" P). */}}
{{- define "secstream.maxReplicas" -}}
{{- $max := int .max -}}
{{- $partitions := int .partitions -}}
{{- if gt $max $partitions -}}
{{- fail (printf "%s: maxReplicas %d exceeds the %d partitions of its topic; raise the topic's partitions or lower maxReplicas" .stage $max $partitions) -}}
{{- end -}}
{{- if eq $max 0 -}}{{ $partitions }}{{- else -}}{{ $max }}{{- end -}}
{{- end -}}

{{/* Validate a consumer stage's replica settings against its topic. Same arguments plus "min" and "replicas". */}}
{{- define "secstream.checkReplicas" -}}
{{- $partitions := int .partitions -}}
{{- $max := include "secstream.maxReplicas" . | int -}}
{{- if gt (int .replicas) $partitions -}}
{{- fail (printf "%s: replicas %d exceeds the %d partitions of its topic; extra consumers would sit idle" .stage (int .replicas) $partitions) -}}
{{- end -}}
{{- if gt (int .min) $max -}}
{{- fail (printf "%s: minReplicas %d exceeds maxReplicas %d (bounded by %d partitions)" .stage (int .min) $max $partitions) -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------------------
     The settings file: one document for every stage. Field names are those of secstream/config.py Settings.
     ------------------------------------------------------------------------------------------------------------ */}}

{{- define "secstream.kafkaSettings" -}}
{{- $k := .Values.kafka -}}
{{- $out := dict "bootstrap_servers" $k.bootstrapServers "security_protocol" $k.securityProtocol "client_id" $k.clientId -}}
{{- if hasPrefix "SASL" $k.securityProtocol -}}
{{- $_ := set $out "sasl_mechanism" $k.sasl.mechanism -}}
{{- $_ := set $out "sasl_username" $k.sasl.username -}}
{{- end -}}
{{- if hasSuffix "SSL" $k.securityProtocol -}}
{{- if $k.tls.caSecret.name -}}
{{- $_ := set $out "ssl_ca_location" (printf "/etc/secstream/kafka-ca/%s" $k.tls.caSecret.key) -}}
{{- end -}}
{{- if $k.tls.clientSecret.name -}}
{{- $_ := set $out "ssl_certificate_location" (printf "/etc/secstream/kafka-client/%s" $k.tls.clientSecret.certKey) -}}
{{- $_ := set $out "ssl_key_location" (printf "/etc/secstream/kafka-client/%s" $k.tls.clientSecret.keyKey) -}}
{{- end -}}
{{- end -}}
{{- if $k.extra -}}
{{- $_ := set $out "extra" $k.extra -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "secstream.settings" -}}
{{- $t := .Values.topics -}}
{{- $topics := dict
      "raw" $t.raw.name "raw_partitions" $t.raw.partitions
      "normalized" $t.normalized.name "normalized_partitions" $t.normalized.partitions
      "dead_letter" $t.deadLetter.name "dead_letter_partitions" $t.deadLetter.partitions
      "delivery_log" $t.deliveryLog.name "delivery_log_partitions" $t.deliveryLog.partitions
      "status" $t.status.name "status_partitions" $t.status.partitions
      "replication_factor" $t.replicationFactor "retention_ms" $t.retentionMs -}}
{{- $exporter := ternary "prometheus" .Values.telemetry.exporter .Values.metrics.enabled -}}
{{- $telemetry := dict "exporter" $exporter "health_port" .Values.telemetry.healthPort
      "prometheus_port" .Values.telemetry.prometheusPort -}}
{{- if .Values.telemetry.otlpEndpoint -}}
{{- $_ := set $telemetry "otlp_endpoint" .Values.telemetry.otlpEndpoint -}}
{{- end -}}
{{- $collector := dict "host" "0.0.0.0" "port" .Values.collector.port -}}
{{- if .Values.collector.tlsSecret -}}
{{- $_ := set $collector "tls_cert_file" "/etc/secstream/collector-tls/tls.crt" -}}
{{- $_ := set $collector "tls_key_file" "/etc/secstream/collector-tls/tls.key" -}}
{{- end -}}
{{- if .Values.collector.tokensSecret -}}
{{- $_ := set $collector "tokens_dir" "/etc/secstream/collector-tokens" -}}
{{- end -}}
{{- $managed := dict
      "kafka" (include "secstream.kafkaSettings" . | fromYaml)
      "topics" $topics
      "rules" .Values.rules
      "destinations" .Values.destinations
      "telemetry" $telemetry
      "sink" (dict "group_prefix" .Values.sink.groupPrefix)
      "stream" (dict "app_id" .Values.stream.appId "data_dir" "/var/lib/secstream/stream")
      "collector" $collector -}}
{{- $merged := mergeOverwrite (deepCopy .Values.config) $managed -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------------------
     Pod building blocks shared by every Linux stage.
     ------------------------------------------------------------------------------------------------------------ */}}

{{/* Environment: config path, secrets by key, extra env. Call with (dict "ctx" $ "secretEnv" map "secretName" s). */}}
{{- define "secstream.env" -}}
{{- $ctx := .ctx -}}
- name: SECSTREAM_CONFIG
  value: {{ .configPath | default "/etc/secstream/config.yaml" }}
{{- $k := $ctx.Values.kafka }}
{{- if and (hasPrefix "SASL" $k.securityProtocol) (not (hasKey $ctx.Values.secretEnv "SECSTREAM_KAFKA__SASL_PASSWORD")) }}
{{- $name := default $ctx.Values.existingSecret $k.sasl.passwordSecret.name }}
{{- if not $name }}
{{- fail "kafka.securityProtocol SASL_* needs kafka.sasl.passwordSecret.name or existingSecret (the password never goes in values)" }}
{{- end }}
- name: SECSTREAM_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $k.sasl.passwordSecret.key }}
{{- end }}
{{- range $env, $key := $ctx.Values.secretEnv }}
{{- if not $ctx.Values.existingSecret }}
{{- fail (printf "secretEnv.%s needs existingSecret" $env) }}
{{- end }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ctx.Values.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- $stageSecret := default $ctx.Values.existingSecret .secretName }}
{{- range $env, $key := .secretEnv }}
{{- if not $stageSecret }}
{{- fail (printf "secret environment variable %s needs a secretName or existingSecret" $env) }}
{{- end }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $stageSecret }}
      key: {{ $key }}
{{- end }}
{{- with $ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Call with (dict "ctx" $) for the file mount, or add "configDir" to mount the ConfigMap as a directory. */}}
{{- define "secstream.configVolumeMounts" -}}
- name: config
{{- if .configDir }}
  mountPath: {{ .configDir }}
{{- else }}
  mountPath: /etc/secstream/config.yaml
  subPath: config.yaml
{{- end }}
  readOnly: true
{{- $k := .ctx.Values.kafka }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/secstream/kafka-ca
  readOnly: true
{{- end }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.clientSecret.name }}
- name: kafka-client
  mountPath: /etc/secstream/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes; the config volume names the ConfigMap given (the hook Job uses its own copy). */}}
{{- define "secstream.configVolumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
{{- $k := .ctx.Values.kafka }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $k.tls.caSecret.name }}
    items:
      - key: {{ $k.tls.caSecret.key }}
        path: {{ $k.tls.caSecret.key }}
{{- end }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.clientSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ $k.tls.clientSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $k.tls.clientSecret.certKey }}
        path: {{ $k.tls.clientSecret.certKey }}
      - key: {{ $k.tls.clientSecret.keyKey }}
        path: {{ $k.tls.clientSecret.keyKey }}
{{- end }}
{{- end -}}

{{/* Writable scratch space on a read-only root filesystem. */}}
{{- define "secstream.scratchVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/secstream
{{- end -}}

{{- define "secstream.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
- name: data
  emptyDir:
    {{- with .Values.dataVolume.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.dataVolume.sizeLimit }}
{{- end -}}

{{- define "secstream.podLabels" -}}
{{ include "secstream.labels" . }}
{{- if .ctx.Values.workloadIdentity.enabled }}
azure.workload.identity/use: "true"
{{- end }}
{{- with .ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "secstream.podAnnotations" -}}
checksum/config: {{ include "secstream.settings" . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "secstream.schedulingLinux" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
nodeSelector:
  kubernetes.io/os: linux
  {{- with .Values.nodeSelector }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Probes on the stage's health endpoints. Call with the port name. */}}
{{/* Probes on a stage's health endpoints. Call with (dict "ctx" $ "port" name), plus "readyPath" and "scheme"
     for an endpoint that differs from the health server's /readyz over HTTP. */}}
{{- define "secstream.probes" -}}
{{- $p := .ctx.Values.probes -}}
{{- $get := printf "{path: %%s, port: %s%s}" .port (ternary (printf ", scheme: %s" .scheme) "" (not (empty .scheme))) -}}
startupProbe:
  httpGet: {{ printf $get "/healthz" }}
  {{- toYaml $p.startup | nindent 2 }}
livenessProbe:
  httpGet: {{ printf $get "/healthz" }}
  {{- toYaml $p.liveness | nindent 2 }}
readinessProbe:
  httpGet: {{ printf $get (.readyPath | default "/readyz") }}
  {{- toYaml $p.readiness | nindent 2 }}
{{- end -}}

{{- define "secstream.workerPorts" -}}
- name: health
  containerPort: {{ .Values.telemetry.healthPort }}
  protocol: TCP
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.telemetry.prometheusPort }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* A Linux stage's pod template. Call with (dict "ctx" $ "component" c "args" list "stage" values-block
     "ports" extra-ports-yaml "volumeMounts" extra "volumes" extra "secretEnv" map "secretName" s). */}}
{{- define "secstream.workerPodTemplate" -}}
{{- $ctx := .ctx -}}
metadata:
  labels:
    {{- include "secstream.podLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    secstream.io/metrics: "true"
  annotations:
    {{- include "secstream.podAnnotations" $ctx | nindent 4 }}
spec:
  serviceAccountName: {{ include "secstream.serviceAccountName" $ctx }}
  automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
  securityContext:
    {{- toYaml $ctx.Values.podSecurityContext | nindent 4 }}
  {{- with .stage.terminationGracePeriodSeconds }}
  terminationGracePeriodSeconds: {{ . }}
  {{- end }}
  {{- include "secstream.schedulingLinux" $ctx | trim | nindent 2 }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "secstream.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 10 }}
  containers:
    - name: {{ .container | default "secstream" }}
      image: {{ include "secstream.imageRef" (dict "ctx" $ctx "image" $ctx.Values.image) }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      command: ["secstream"]
      args:
        {{- toYaml (concat (list "--log-level" $ctx.Values.logLevel) .args) | nindent 8 }}
      workingDir: /var/lib/secstream
      env:
        {{- include "secstream.env" (dict "ctx" $ctx "secretEnv" .secretEnv "secretName" .secretName) | nindent 8 }}
      ports:
        {{- include "secstream.workerPorts" $ctx | nindent 8 }}
        {{- with .ports }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- include "secstream.probes" (.probes | default (dict "ctx" $ctx "port" "health")) | nindent 6 }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $ctx.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        {{- include "secstream.configVolumeMounts" (dict "ctx" $ctx) | nindent 8 }}
        {{- include "secstream.scratchVolumeMounts" $ctx | nindent 8 }}
        {{- with .volumeMounts }}
        {{- . | nindent 8 }}
        {{- end }}
  volumes:
    {{- include "secstream.configVolumes" (dict "ctx" $ctx "configMap" (include "secstream.configMapName" $ctx)) | nindent 4 }}
    {{- include "secstream.scratchVolumes" $ctx | nindent 4 }}
    {{- with .volumes }}
    {{- . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The pod spec of a one-shot Job. Call with (dict "ctx" $ "args" list "resources" map "restartPolicy" s
     "configMap" name "withServiceAccount" bool "secretEnv" map "secretName" s). */}}
{{- define "secstream.jobPodSpec" -}}
{{- $ctx := .ctx -}}
restartPolicy: {{ .restartPolicy }}
{{- if .withServiceAccount }}
serviceAccountName: {{ include "secstream.serviceAccountName" $ctx }}
{{- end }}
automountServiceAccountToken: {{ and .withServiceAccount $ctx.Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{ include "secstream.schedulingLinux" $ctx | trim }}
containers:
  - name: secstream
    image: {{ include "secstream.imageRef" (dict "ctx" $ctx "image" $ctx.Values.image) }}
    imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
    command: ["secstream"]
    args:
      {{- toYaml (concat (list "--log-level" $ctx.Values.logLevel) .args) | nindent 6 }}
    workingDir: /var/lib/secstream
    env:
      {{- include "secstream.env" (dict "ctx" $ctx "secretEnv" .secretEnv "secretName" .secretName) | nindent 6 }}
    resources:
      {{- toYaml .resources | nindent 6 }}
    securityContext:
      {{- toYaml $ctx.Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      {{- include "secstream.configVolumeMounts" (dict "ctx" $ctx) | nindent 6 }}
      {{- include "secstream.scratchVolumeMounts" $ctx | nindent 6 }}
volumes:
  {{- include "secstream.configVolumes" (dict "ctx" $ctx "configMap" .configMap) | nindent 2 }}
  {{- include "secstream.scratchVolumes" $ctx | nindent 2 }}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------------------
     Autoscaling of one consumer Deployment. Call with (dict "ctx" $ "component" c "name" deploymentName
     "group" consumerGroup "topic" topicName "min" n "max" n "lagThreshold" n "activationLagThreshold" n).
     ------------------------------------------------------------------------------------------------------------ */}}
{{- define "secstream.autoscaler" -}}
{{- $ctx := .ctx -}}
{{- $a := $ctx.Values.autoscaling -}}
{{- if eq $a.mode "keda" }}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "secstream.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  pollingInterval: {{ $a.keda.pollingInterval }}
  cooldownPeriod: {{ $a.keda.cooldownPeriod }}
  minReplicaCount: {{ .min }}
  maxReplicaCount: {{ .max }}
  {{- if $a.keda.fallbackReplicas }}
  fallback:
    failureThreshold: 3
    replicas: {{ min (int $a.keda.fallbackReplicas) (int .max) }}
  {{- end }}
  {{- with $a.keda.behavior }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        {{- toYaml . | nindent 8 }}
  {{- end }}
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: {{ $ctx.Values.kafka.bootstrapServers | quote }}
        consumerGroup: {{ .group | quote }}
        topic: {{ .topic | quote }}
        lagThreshold: {{ .lagThreshold | toString | quote }}
        activationLagThreshold: {{ .activationLagThreshold | toString | quote }}
        offsetResetPolicy: {{ $a.keda.offsetResetPolicy | quote }}
        {{- /* The scaler then caps desired replicas at the partition count as well. */}}
        allowIdleConsumers: "false"
      {{- if ne $ctx.Values.kafka.securityProtocol "PLAINTEXT" }}
      authenticationRef:
        name: {{ include "secstream.componentName" (dict "ctx" $ctx "component" "kafka") }}
      {{- end }}
{{- else if eq $a.mode "hpa" }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "secstream.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  minReplicas: {{ .min }}
  maxReplicas: {{ .max }}
  metrics:
    {{- if $a.hpa.externalLagMetric.enabled }}
    - type: External
      external:
        metric:
          name: {{ $a.hpa.externalLagMetric.name }}
          selector:
            matchLabels:
              consumergroup: {{ .group | quote }}
              topic: {{ .topic | quote }}
        target:
          type: AverageValue
          averageValue: {{ .lagThreshold | toString | quote }}
    {{- else }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.hpa.targetCPUUtilizationPercentage }}
    {{- end }}
  {{- with $a.hpa.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "secstream.pdb" -}}
{{- if .pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "secstream.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "secstream.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- end }}
{{- end -}}
