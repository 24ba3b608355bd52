{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "trace-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "trace-worker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "trace-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trace-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trace-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "trace-worker.labels" -}}
helm.sh/chart: {{ include "trace-worker.chart" . }}
{{ include "trace-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "trace-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trace-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trace-worker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding credentials: the existing one, the rendered one (when a credential is set), or "". */}}
{{- define "trace-worker.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if and .Values.secret.create (or .Values.secret.flightsqlToken .Values.secret.redisPassword .Values.secret.s3AccessKeyId .Values.secret.s3SecretAccessKey) }}
{{- include "trace-worker.fullname" . }}
{{- end }}
{{- end }}

{{/* Whether the local blob store (file://) is in use: then /data is a writable volume. */}}
{{- define "trace-worker.localBlob" -}}
{{- if hasPrefix "file://" .Values.config.blobUrl }}true{{ end }}
{{- end }}

{{/* Seconds a stopping worker may still need after the drain timeout (worker/service/app.py Service.stop):
up to 30 s for the clean-up of jobs cancelled at the drain deadline (lease release, terminal write), then up
to 30 s for shielded Redis writes still running, then closing its clients. */}}
{{- define "trace-worker.shutdownAfterDrainSeconds" -}}60{{- end }}

{{/* Pod termination grace: the explicit value, or the drain timeout plus a margin; always covers the drain
timeout plus the worker's clean-up after it (trace-worker.shutdownAfterDrainSeconds). */}}
{{- define "trace-worker.terminationGracePeriodSeconds" -}}
{{- $drain := int .Values.config.drainTimeoutSeconds }}
{{- $needed := add $drain (int (include "trace-worker.shutdownAfterDrainSeconds" .)) }}
{{- $grace := int (default (add $drain .Values.terminationGraceMarginSeconds) .Values.terminationGracePeriodSeconds) }}
{{- if le $grace $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than config.drainTimeoutSeconds (%d) plus the worker's %ss of clean-up after the drain, or Kubernetes kills a stopping worker before it has released its jobs" $grace $drain (include "trace-worker.shutdownAfterDrainSeconds" .)) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* KEDA's target per replica for the waiting-work trigger: autoscaling.keda.target, or config.concurrency. */}}
{{- define "trace-worker.kedaTarget" -}}
{{- $target := .Values.autoscaling.keda.target }}
{{- if kindIs "invalid" $target }}{{ $target = .Values.config.concurrency }}{{ end }}
{{- toString (int $target) }}
{{- end }}

{{/* Settings the chart itself renders (ConfigMap or Secret): config.extra and extraEnv must not repeat them. */}}
{{- define "trace-worker.managedSettings" -}}
{{- list "TRACE_WORKER_REDIS_URL" "TRACE_WORKER_REDIS_USERNAME" "TRACE_WORKER_REDIS_PASSWORD" "TRACE_WORKER_REDIS_CLUSTER" "TRACE_WORKER_KEY_PREFIX" "TRACE_WORKER_FLIGHTSQL_URL" "TRACE_WORKER_FLIGHTSQL_TOKEN" "TRACE_WORKER_FLIGHTSQL_TLS_CA" "TRACE_WORKER_BLOB_URL" "TRACE_WORKER_BLOB_S3_ENDPOINT" "TRACE_WORKER_BLOB_S3_REGION" "TRACE_WORKER_BLOB_S3_ALLOW_HTTP" "TRACE_WORKER_BLOB_S3_ACCESS_KEY_ID" "TRACE_WORKER_BLOB_S3_SECRET_ACCESS_KEY" "TRACE_WORKER_WORKER_CONCURRENCY" "TRACE_WORKER_DRAIN_TIMEOUT_S" "TRACE_WORKER_HTTP_HOST" "TRACE_WORKER_HTTP_PORT" "TRACE_WORKER_LOG_FORMAT" "TRACE_WORKER_LOG_LEVEL" | toJson }}
{{- end }}

{{/* The most replicas the release can run: replicaCount, or autoscaling.maxReplicas. */}}
{{- define "trace-worker.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* host:port of Redis for KEDA, from autoscaling.keda.redisAddress or config.redisUrl. */}}
{{- define "trace-worker.redisAddress" -}}
{{- if .Values.autoscaling.keda.redisAddress }}
{{- .Values.autoscaling.keda.redisAddress }}
{{- else }}
{{- $u := urlParse .Values.config.redisUrl }}
{{- $host := regexReplaceAll "^.*@" $u.host "" }}
{{- if contains ":" $host }}{{ $host }}{{ else }}{{ printf "%s:6379" $host }}{{ end }}
{{- end }}
{{- end }}

{{/* Comma-separated host:port of Redis Cluster nodes for KEDA's redis-cluster-streams trigger:
autoscaling.keda.redisAddresses, or the one address of trace-worker.redisAddress. */}}
{{- define "trace-worker.redisClusterAddresses" -}}
{{- if .Values.autoscaling.keda.redisAddresses }}
{{- join "," .Values.autoscaling.keda.redisAddresses }}
{{- else }}
{{- include "trace-worker.redisAddress" . }}
{{- end }}
{{- end }}

{{/* The Redis URL the worker gets: config.redisUrl plus the mounted TLS files (redis-py reads ssl_* query arguments). */}}
{{- define "trace-worker.redisUrl" -}}
{{- $url := .Values.config.redisUrl }}
{{- with .Values.redisTls }}
{{- if .secretName }}
{{- if not (hasPrefix "rediss://" $url) }}
{{- fail "redisTls.secretName needs a rediss:// config.redisUrl" }}
{{- end }}
{{- $query := list (printf "ssl_ca_certs=/etc/trace-worker/redis-tls/%s" .caKey) }}
{{- if .clientCert }}
{{- $query = append $query (printf "ssl_certfile=/etc/trace-worker/redis-tls/%s" .certKey) }}
{{- $query = append $query (printf "ssl_keyfile=/etc/trace-worker/redis-tls/%s" .keyKey) }}
{{- end }}
{{- $url = printf "%s%s%s" $url (ternary "&" "?" (contains "?" $url)) (join "&" $query) }}
{{- end }}
{{- end }}
{{- $url }}
{{- end }}

{{/* Redis database index from config.redisUrl's path ("/3" -> 3), default 0. */}}
{{- define "trace-worker.redisDatabase" -}}
{{- $u := urlParse .Values.config.redisUrl }}
{{- $db := trimPrefix "/" $u.path }}
{{- if $db }}{{ $db }}{{ else }}0{{ end }}
{{- end }}

{{/* Container env entries for the credentials, each from the Secret; keys of an existing Secret are optional. */}}
{{- define "trace-worker.secretEnv" -}}
{{- $secretName := include "trace-worker.secretName" . }}
{{- if $secretName }}
{{- $existing := .Values.secret.existingSecret }}
{{- range $var, $field := dict "TRACE_WORKER_FLIGHTSQL_TOKEN" "flightsqlToken" "TRACE_WORKER_REDIS_PASSWORD" "redisPassword" "TRACE_WORKER_BLOB_S3_ACCESS_KEY_ID" "s3AccessKeyId" "TRACE_WORKER_BLOB_S3_SECRET_ACCESS_KEY" "s3SecretAccessKey" }}
{{- if or $existing (get $.Values.secret $field) }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secretName }}
      key: {{ get $.Values.secret.keys $field }}
      optional: {{ ternary "true" "false" (not (empty $existing)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
