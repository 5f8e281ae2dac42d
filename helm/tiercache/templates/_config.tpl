{{/* The server TOML (crates/tiercache-server/src/config.rs) built from the values. Only
fields the server knows are written: it rejects unknown ones. Integers go through int64 so
large byte counts never print as floats. */}}
{{- define "tiercache.policyToml" -}}
{{- range $key, $value := . }}
{{- if has $key (list "l1_max_bytes" "max_value_bytes" "max_key_bytes" "max_tags" "max_tag_bytes") }}
{{ $key }} = {{ int64 $value }}
{{- else if eq $key "jitter" }}
{{ $key }} = {{ float64 $value }}
{{- else if eq $key "l1_enabled" }}
{{ $key }} = {{ $value }}
{{- else }}
{{ $key }} = {{ toString $value | toJson }}
{{- end }}
{{- end }}
{{- end -}}
{{- define "tiercache.configToml" -}}
{{- $t := .Values.config.telemetry -}}
# Rendered by the tiercache chart from its values (config.*, redis.*, server.*).
listen = "0.0.0.0:{{ .Values.server.grpcPort }}"
dynamic_namespaces = {{ .Values.config.dynamicNamespaces }}
shutdown_grace = "{{ .Values.server.shutdownGraceSeconds }}s"
{{- with include "tiercache.redisUrl" . }}

[redis]
url = {{ toJson . }}
connect_timeout = {{ toJson $.Values.redis.connectTimeout }}
response_timeout = {{ toJson $.Values.redis.responseTimeout }}
key_prefix = {{ toJson $.Values.redis.keyPrefix }}
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
