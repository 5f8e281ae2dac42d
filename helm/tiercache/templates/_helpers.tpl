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

{{/* Whether the whole Redis URL reaches the server from an existing Secret (TIERCACHE_REDIS_URL). */}}
{{- define "tiercache.redisFromSecret" -}}
{{- if .Values.redis.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Whether the chart makes a Secret of its own (the Redis password given in the values). */}}
{{- define "tiercache.chartSecret" -}}
{{- if and .Values.redis.password (not .Values.redis.passwordSecret) (not .Values.redis.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* The Secret and key holding the Redis password (TIERCACHE_REDIS_PASSWORD), or empty. */}}
{{- define "tiercache.redisPasswordRef" -}}
{{- if .Values.redis.existingSecret -}}
{{- else if .Values.redis.passwordSecret -}}
{{- dict "name" .Values.redis.passwordSecret "key" .Values.redis.passwordSecretKey | toJson -}}
{{- else if .Values.redis.password -}}
{{- dict "name" (include "tiercache.fullname" .) "key" "redis-password" | toJson -}}
{{- end -}}
{{- end -}}

{{/* Whether the server's [auth] table is rendered: any principal turns auth on. */}}
{{- define "tiercache.authOn" -}}
{{- if .Values.auth.principals -}}true{{- end -}}
{{- end -}}

{{/* The name the probes and `helm test` expect on the server certificate. */}}
{{- define "tiercache.tlsServerName" -}}
{{- default (printf "%s.%s.svc" (include "tiercache.fullname" .) .Release.Namespace) .Values.tls.serverName -}}
{{- end -}}

{{/* `tiercache health` arguments reaching this pod's own gRPC port over TLS (exec probes). */}}
{{- define "tiercache.tlsHealthArgs" -}}
- --tls-ca
- /etc/tiercache-tls/ca.crt
- --tls-server-name
- {{ include "tiercache.tlsServerName" . }}
{{- if .Values.tls.clientAuth }}
- --tls-cert
- /etc/tiercache-tls/tls.crt
- --tls-key
- /etc/tiercache-tls/tls.key
{{- end }}
{{- end -}}

{{/* The exec probe of a TLS pod: `tiercache health` over TLS to its own port. */}}
{{- define "tiercache.execHealthProbe" -}}
exec:
  command:
    - tiercache
    - health
    - --addr
    - https://127.0.0.1:{{ .Values.server.grpcPort }}
    - --timeout
    - 2s
    {{- include "tiercache.tlsHealthArgs" . | nindent 4 }}
{{- end -}}

{{/* Secret volumes of the server pod (TLS, tokens, Redis TLS), each mounted beside the config
(not inside it: /etc/tiercache is a ConfigMap volume). Files are updated in place when the
Secret changes; the server re-reads them. */}}
{{- define "tiercache.secretMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/tiercache-tls
  readOnly: true
{{- end }}
{{- if .Values.auth.tokensSecret }}
- name: tokens
  mountPath: /etc/tiercache-auth
  readOnly: true
{{- end }}
{{- if .Values.redis.tls.secretName }}
- name: redis-tls
  mountPath: /etc/tiercache-redis-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "tiercache.secretVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    # Readable by the server's group (the pod's fsGroup) only.
    defaultMode: 0440
    secretName: {{ .Values.tls.secretName }}
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      # The client CA under mTLS, and what the probes check the server certificate against.
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- if .Values.auth.tokensSecret }}
- name: tokens
  secret:
    # Readable by the server's group (the pod's fsGroup) only.
    defaultMode: 0440
    secretName: {{ .Values.auth.tokensSecret }}
    items:
      - {key: {{ .Values.auth.tokensSecretKey }}, path: tokens}
{{- end }}
{{- with .Values.redis.tls }}
{{- if .secretName }}
- name: redis-tls
  secret:
    # Readable by the server's group (the pod's fsGroup) only.
    defaultMode: 0440
    secretName: {{ .secretName }}
    items:
      {{- if .caKey }}
      - {key: {{ .caKey }}, path: ca.crt}
      {{- end }}
      {{- if .certKey }}
      - {key: {{ .certKey }}, path: tls.crt}
      - {key: {{ .keyKey }}, path: tls.key}
      {{- end }}
{{- end }}
{{- end }}
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
{{- if or .Values.redis.username .Values.redis.password .Values.redis.passwordSecret .Values.redis.tls.secretName -}}
{{- fail "redis.username, redis.password, redis.passwordSecret and redis.tls need redis.url (or the dev Redis)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.auth.tokensSecret (not (include "tiercache.authOn" .)) -}}
{{- fail "auth.tokensSecret maps tokens to principals: list them, with their rights, in auth.principals" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt (cert-manager writes one)" -}}
{{- end -}}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) -}}
{{- fail "tls.clientAuth (mTLS) needs tls.enabled" -}}
{{- end -}}
{{- if and .Values.redis.tls.secretName (not (hasPrefix "rediss://" (include "tiercache.redisUrl" .))) (not .Values.redis.existingSecret) -}}
{{- fail "redis.tls.secretName needs a rediss:// redis.url" -}}
{{- end -}}
{{- if and .Values.redis.tls.certKey (not .Values.redis.tls.keyKey) -}}
{{- fail "redis.tls.certKey needs redis.tls.keyKey (the client certificate's key)" -}}
{{- end -}}
{{- range $name, $p := .Values.auth.principals -}}
{{- if not $p.rights -}}
{{- fail (printf "auth.principals.%s has no rights: give it rights: {\"<namespace or prefix*>\": [read, ...]}" $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not be above autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) -}}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- /* Last, so the other checks name their own value first. */ -}}
{{- if and (not (include "tiercache.authOn" .)) (not .Values.auth.allowInsecure) -}}
{{- fail "the server listens on every interface of the pod and refuses to start without authentication: set auth.principals (with auth.tokensSecret, token_sha256 or mTLS client_cert_names), or auth.allowInsecure: true to let anyone who reaches the port read, write and flush every namespace (docs/deploy.md, \"Security\")" -}}
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
