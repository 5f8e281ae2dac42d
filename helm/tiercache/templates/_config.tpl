{{/* The server TOML (crates/tiercache-server/src/config.rs) built from the values. Only
fields the server knows are written: it rejects unknown ones. Integers go through int64 so
large byte counts never print as floats. */}}
{{- define "tiercache.policyToml" -}}
{{- range $key, $value := . }}
{{- if has $key (list "l1_max_bytes" "max_value_bytes" "max_key_bytes" "max_tags" "max_tag_bytes") }}
{{ $key }} = {{ int64 $value }}
{{- else if eq $key "jitter" }}
{{ $key }} = {{ float64 $value }}
{{- else if eq $key "rate_limit" }}
{{ $key }} = { per_second = {{ int64 $value.per_second }}{{ with $value.burst }}, burst = {{ int64 . }}{{ end }} }
{{- else if eq $key "l1_enabled" }}
{{ $key }} = {{ $value }}
{{- else }}
{{ $key }} = {{ toString $value | toJson }}
{{- end }}
{{- end }}
{{- end -}}
{{- define "tiercache.configToml" -}}
{{- $t := .Values.config.telemetry -}}
# Rendered by the tiercache chart from its values (config.*, redis.*, server.*, auth.*, tls.*).
listen = "0.0.0.0:{{ .Values.server.grpcPort }}"
{{- if .Values.auth.allowInsecure }}
allow_insecure = true
{{- end }}
{{- if not (kindIs "invalid" .Values.auth.reflection) }}
reflection = {{ .Values.auth.reflection }}
{{- end }}
dynamic_namespaces = {{ .Values.config.dynamicNamespaces }}
shutdown_grace = "{{ .Values.server.shutdownGraceSeconds }}s"
{{- with include "tiercache.redisUrl" . }}

[redis]
url = {{ toJson . }}
connect_timeout = {{ toJson $.Values.redis.connectTimeout }}
response_timeout = {{ toJson $.Values.redis.responseTimeout }}
key_prefix = {{ toJson $.Values.redis.keyPrefix }}
{{- if and $.Values.redis.username (not $.Values.redis.existingSecret) }}
username = {{ toJson $.Values.redis.username }}
{{- end }}
{{- with $.Values.redis.tls.secretName }}
{{- with $.Values.redis.tls.caKey }}
tls_ca_file = "/etc/tiercache-redis-tls/ca.crt"
{{- end }}
{{- if $.Values.redis.tls.certKey }}
tls_cert_file = "/etc/tiercache-redis-tls/tls.crt"
tls_key_file = "/etc/tiercache-redis-tls/tls.key"
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}

[tls]
cert_file = "/etc/tiercache-tls/tls.crt"
key_file = "/etc/tiercache-tls/tls.key"
{{- if .Values.tls.clientAuth }}
client_ca_file = "/etc/tiercache-tls/ca.crt"
{{- end }}
reload_interval = {{ toJson .Values.tls.reloadInterval }}
{{- end }}
{{- if include "tiercache.authOn" . }}

[auth]
{{- if .Values.auth.tokensSecret }}
tokens_file = "/etc/tiercache-auth/tokens"
{{- end }}
{{- range $name, $p := .Values.auth.principals }}

[auth.principals.{{ toJson $name }}]
{{- with $p.token_sha256 }}
token_sha256 = {{ toJson . }}
{{- end }}
{{- with $p.client_cert_names }}
client_cert_names = {{ toJson . }}
{{- end }}
{{- with $p.rate_limit }}
rate_limit = { per_second = {{ int64 .per_second }}{{ with .burst }}, burst = {{ int64 . }}{{ end }} }
{{- end }}

[auth.principals.{{ toJson $name }}.rights]
{{- range $pattern, $rights := $p.rights }}
{{ toJson $pattern }} = {{ toJson $rights }}
{{- end }}
{{- end }}
{{- end }}

[limits]
max_batch = {{ int64 .Values.config.limits.maxBatch }}
pipeline_max_in_flight = {{ int64 .Values.config.limits.pipelineMaxInFlight }}
max_namespaces = {{ int64 .Values.config.limits.maxNamespaces }}
max_reply_bytes = {{ int64 .Values.config.limits.maxReplyBytes }}
max_message_bytes = {{ int64 .Values.config.limits.maxMessageBytes }}
watch_buffer = {{ int64 .Values.config.limits.watchBuffer }}

[l1]
max_bytes = {{ int64 .Values.config.l1.maxBytes }}

[server]
http2_max_concurrent_streams = {{ int64 .Values.config.connections.http2MaxConcurrentStreams }}
http2_keepalive_interval = {{ toJson .Values.config.connections.http2KeepaliveInterval }}
http2_keepalive_timeout = {{ toJson .Values.config.connections.http2KeepaliveTimeout }}
tcp_keepalive = {{ toJson .Values.config.connections.tcpKeepalive }}

[telemetry]
metrics = {{ $t.metrics }}
admin_listen = "0.0.0.0:{{ .Values.server.adminPort }}"
{{- with $t.adminTokenSha256 }}
admin_token_sha256 = {{ toJson . }}
{{- end }}
{{- with $t.otlpEndpoint }}
otlp_endpoint = {{ toJson . }}
{{- end }}
{{- with $t.serviceName }}
service_name = {{ toJson . }}
{{- end }}
{{- with $t.tracesSampler }}
traces_sampler = {{ toJson . }}
{{- end }}
{{- if not (kindIs "invalid" $t.tracesSamplerArg) }}
traces_sampler_arg = {{ float64 $t.tracesSamplerArg }}
{{- end }}
{{- with $t.metricsExportInterval }}
metrics_export_interval = {{ toJson . }}
{{- end }}
{{- with $t.resourceAttributes }}

[telemetry.resource_attributes]
{{- range $k, $v := . }}
{{ toJson $k }} = {{ toJson $v }}
{{- end }}
{{- end }}

[defaults]
{{- include "tiercache.policyToml" (.Values.config.defaults | default dict) }}
{{- range $name, $policy := .Values.config.namespaces }}

[namespaces.{{ toJson $name }}]
{{- include "tiercache.policyToml" ($policy | default dict) }}
{{- end }}
{{ end -}}
