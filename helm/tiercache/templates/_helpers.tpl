{{/* The chart name, overridable. */}}
{{- define "tiercache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name of the release's resources: <release>-<chart> unless the release name has it. */}}
{{- define "tiercache.fullname" -}}
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

{{- define "tiercache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource, without the component. */}}
{{- define "tiercache.commonLabels" -}}
helm.sh/chart: {{ include "tiercache.chart" . }}
app.kubernetes.io/name: {{ include "tiercache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tiercache
{{- end -}}

{{/* Labels of the server's resources. */}}
{{- define "tiercache.labels" -}}
{{ include "tiercache.commonLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Selector labels of the server pods. */}}
{{- define "tiercache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tiercache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "tiercache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tiercache.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The server image reference: digest wins over tag, tag defaults to appVersion. */}}
{{- define "tiercache.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The dev Redis is used only when no external Redis is named. */}}
{{- define "tiercache.devRedis" -}}
{{- if and .Values.redis.dev.enabled (not .Values.redis.url) (not .Values.redis.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "tiercache.devRedisName" -}}
{{- printf "%s-redis" (include "tiercache.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Redis URL without credentials, or empty for memory-only. */}}
{{- define "tiercache.redisUrl" -}}
{{- if .Values.redis.url -}}
{{- .Values.redis.url -}}
{{- else if include "tiercache.devRedis" . -}}
{{- printf "redis://%s:6379" (include "tiercache.devRedisName" .) -}}
{{- else if .Values.redis.existingSecret -}}
{{- /* The real URL comes from the Secret; the file needs one to hold the timeouts. */ -}}
redis://from-secret:6379
{{- end -}}
{{- end -}}

{{/* Whether the Redis URL reaches the server from a Secret (credentials or existingSecret). */}}
{{- define "tiercache.redisFromSecret" -}}
{{- if or .Values.redis.existingSecret .Values.redis.password .Values.redis.username -}}true{{- end -}}
{{- end -}}

{{- define "tiercache.secretName" -}}
{{- default (include "tiercache.fullname" .) .Values.redis.existingSecret -}}
{{- end -}}

{{- define "tiercache.secretKey" -}}
{{- if .Values.redis.existingSecret -}}{{ .Values.redis.existingSecretKey }}{{- else -}}redis-url{{- end -}}
{{- end -}}

{{/* The Redis URL with the chart's credentials, for the chart's Secret. */}}
{{- define "tiercache.redisUrlWithCredentials" -}}
{{- $url := include "tiercache.redisUrl" . -}}
{{- $parts := splitn "://" 2 $url -}}
{{- $user := .Values.redis.username | urlquery -}}
{{- $pass := .Values.redis.password | urlquery -}}
{{- printf "%s://%s:%s@%s" $parts._0 $user $pass $parts._1 -}}
{{- end -}}

{{/* Mebibytes of a memory quantity written in Mi or Gi (the schema allows only those). */}}
{{- define "tiercache.memoryMiB" -}}
{{- $q := toString . -}}
{{- if hasSuffix "Gi" $q -}}{{ mul (trimSuffix "Gi" $q | atoi) 1024 }}{{- else -}}{{ trimSuffix "Mi" $q | atoi }}{{- end -}}
{{- end -}}

{{/* Checks that fail the render with a message naming the value to change. */}}
{{- define "tiercache.checks" -}}
{{- $limitMiB := include "tiercache.memoryMiB" .Values.resources.limits.memory | int64 -}}
{{- $budget := int64 .Values.config.l1.maxBytes -}}
{{- $allowed := div (mul $limitMiB 1048576 .Values.sizing.l1MaxPercentOfLimit) 100 -}}
{{- if gt $budget $allowed -}}
{{- fail (printf "the L1 budget (config.l1.maxBytes, %d MiB, shared by every namespace) is above %d%% (sizing.l1MaxPercentOfLimit) of resources.limits.memory (%s): raise the limit or lower config.l1.maxBytes" (div $budget 1048576) (int .Values.sizing.l1MaxPercentOfLimit) .Values.resources.limits.memory) -}}
{{- end -}}
{{- $drain := add .Values.server.preStopDelaySeconds .Values.server.shutdownGraceSeconds -}}
{{- if and .Values.server.terminationGracePeriodSeconds (le (int .Values.server.terminationGracePeriodSeconds) (int $drain)) -}}
{{- fail (printf "server.terminationGracePeriodSeconds (%d) must be above server.preStopDelaySeconds + server.shutdownGraceSeconds (%d)" (int .Values.server.terminationGracePeriodSeconds) (int $drain)) -}}
{{- end -}}
{{- if not (include "tiercache.redisUrl" .) -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
{{- fail "memory-only (no redis.url, redis.existingSecret or redis.dev) needs replicaCount 1 and autoscaling off: replicas would each hold their own cache" -}}
{{- end -}}
{{- if or .Values.redis.username .Values.redis.password -}}
{{- fail "redis.username and redis.password need redis.url (or the dev Redis)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not be above autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) -}}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: set, or preStop delay + shutdown grace + 5. */}}
{{- define "tiercache.terminationGrace" -}}
{{- if .Values.server.terminationGracePeriodSeconds -}}
{{- .Values.server.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add .Values.server.preStopDelaySeconds .Values.server.shutdownGraceSeconds 5 -}}
{{- end -}}
{{- end -}}
