{{/* Names, labels and the pieces every workload shares. */}}

{{- define "tidings.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: "tidings" for a release named tidings. */}}
{{- define "tidings.fullname" -}}
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

{{/* "<fullname>-<suffix>", e.g. tidings-operator. Call with (list $ "operator"). */}}
{{- define "tidings.component" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "tidings.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) }}
{{- end }}

{{- define "tidings.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component. Call with (list $ "dispatcher"). */}}
{{- define "tidings.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tidings.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Standard labels of one component. Call with (list $ "dispatcher"). */}}
{{- define "tidings.labels" -}}
{{- $root := index . 0 -}}
{{ include "tidings.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tidings
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ include "tidings.chart" $root }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tidings.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "tidings.sealKeySecret" -}}
{{- .Values.sealKey.existingSecret | default (include "tidings.component" (list . "seal-key")) }}
{{- end }}

{{- define "tidings.sealKeyKey" -}}
{{- if .Values.sealKey.existingSecret }}{{ .Values.sealKey.existingSecretKey }}{{ else }}key{{ end }}
{{- end }}

{{/* Namespaces the operator watches; empty means all. */}}
{{- define "tidings.watchNamespaces" -}}
{{- toJson (.Values.operator.watchNamespaces | default list | uniq) }}
{{- end }}

{{/* Namespaces that get the adapters' ServiceAccount. */}}
{{- define "tidings.sourceNamespaces" -}}
{{- toJson (.Values.sources.namespaces | default .Values.operator.watchNamespaces | default list | uniq) }}
{{- end }}

{{- define "tidings.redisHost" -}}
{{- printf "%s.%s.svc.%s" (include "tidings.component" (list . "redis")) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "tidings.redisPasswordSecret" -}}
{{- .Values.redis.existingSecret | default (include "tidings.component" (list . "redis")) }}
{{- end }}

{{- define "tidings.redisCAPath" -}}
{{- printf "/etc/tidings/redis-ca/%s" .Values.externalRedis.tls.caKey }}
{{- end }}

{{- define "tidings.redisClientCertDir" -}}
/etc/tidings/redis-client
{{- end }}

{{/*
The Redis URL of every process. The bundled Redis: password as $(REDIS_PASSWORD)
(expanded by the kubelet from the env var before it). External Redis: the URL
as given; user, password and TLS files travel as REDIS_USERNAME,
REDIS_PASSWORD, REDIS_TLS_* (tidings.redisEnv), so a password needs no
URL-escaping, and the operator hands them on to the adapters it runs.
*/}}
{{- define "tidings.redisURL" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "tidings.redisHost" .) }}
{{- else }}
{{- .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{/* host:port of Redis, for KEDA. */}}
{{- define "tidings.redisAddress" -}}
{{- if .Values.dispatcher.keda.address }}
{{- .Values.dispatcher.keda.address }}
{{- else if .Values.redis.enabled }}
{{- printf "%s:6379" (include "tidings.redisHost" .) }}
{{- else if .Values.externalRedis.url }}
{{- $u := urlParse .Values.externalRedis.url }}
{{- if contains ":" $u.host }}{{ $u.host }}{{ else }}{{ printf "%s:6379" $u.host }}{{ end }}
{{- else }}
{{- fail "dispatcher.keda.address: set host:port of your Redis (externalRedis.urlSecret hides it from the chart)" }}
{{- end }}
{{- end }}

{{/* The Redis environment of the operator and the dispatchers. */}}
{{- define "tidings.redisEnv" -}}
{{- $root := . }}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "tidings.redisPasswordSecret" . }}, key: password}
- name: REDIS_URL
  value: {{ include "tidings.redisURL" . | quote }}
{{- else if .Values.externalRedis.urlSecret.name }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.externalRedis.urlSecret.name }}, key: {{ .Values.externalRedis.urlSecret.key }}}
{{- else }}
{{- if .Values.externalRedis.passwordSecret.name }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.externalRedis.passwordSecret.name }}, key: {{ .Values.externalRedis.passwordSecret.key }}}
{{- end }}
- name: REDIS_URL
  value: {{ include "tidings.redisURL" . | quote }}
{{- end }}
{{- if not .Values.redis.enabled }}
{{- $ext := .Values.externalRedis }}
{{- if $ext.username }}
- name: REDIS_USERNAME
  value: {{ $ext.username | quote }}
{{- end }}
{{- if $ext.tls.caSecret }}
- name: REDIS_TLS_CA_FILE
  value: {{ include "tidings.redisCAPath" . | quote }}
{{- end }}
{{- if $ext.tls.clientCertSecret }}
- name: REDIS_TLS_CERT_FILE
  value: {{ printf "%s/tls.crt" (include "tidings.redisClientCertDir" .) | quote }}
- name: REDIS_TLS_KEY_FILE
  value: {{ printf "%s/tls.key" (include "tidings.redisClientCertDir" .) | quote }}
{{- end }}
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.cluster }}
- name: TIDINGS_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- end }}

{{/* Everything a Tidings container shares: logs, seal key. */}}
{{- define "tidings.commonEnv" -}}
- name: TIDINGS_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: TIDINGS_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: TIDINGS_SEAL_KEY_FILE
  value: /etc/tidings/seal/{{ include "tidings.sealKeyKey" . }}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{ include "tidings.destinationEnv" . }}
{{- end }}

{{/* The destination policy (tidings.api.destinations), the same for the operator
(checked when a Trigger compiles) and the dispatchers (checked on connect). The
node's addresses: the pod's own host IPs (downward API) and
destinations.nodeAddresses. */}}
{{- define "tidings.destinationEnv" -}}
{{- $d := .Values.destinations -}}
- name: TIDINGS_DESTINATIONS_LOOPBACK
  value: {{ ternary "allow" "refuse" $d.allowLoopback | quote }}
- name: TIDINGS_DESTINATIONS_NODE
  value: {{ ternary "allow" "refuse" $d.allowNodeAddresses | quote }}
- name: TIDINGS_HOST_IPS
  valueFrom:
    fieldRef: {fieldPath: status.hostIPs}
- name: TIDINGS_NODE_ADDRESSES
  value: {{ printf "$(TIDINGS_HOST_IPS)%s" (include "tidings.joinPrefixed" $d.nodeAddresses) | quote }}
{{- with $d.allow }}
- name: TIDINGS_DESTINATIONS_ALLOW
  value: {{ join "," . | quote }}
{{- end }}
{{- with $d.deny }}
- name: TIDINGS_DESTINATIONS_DENY
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}

{{- define "tidings.joinPrefixed" -}}
{{- range . }},{{ . }}{{ end }}
{{- end }}

{{/* The CIDRs among allow- or deny-list entries (host suffixes are enforced by
the dispatcher alone: a NetworkPolicy cannot name hosts), as a JSON list; a
bare address becomes a /32 or /128. */}}
{{- define "tidings.cidrs" -}}
{{- $out := list }}
{{- range . }}
{{- if regexMatch "^[0-9.]+(/[0-9]+)?$|^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(/[0-9]+)?$" . }}
{{- $cidr := . }}
{{- if not (contains "/" $cidr) }}{{ $cidr = printf "%s/%s" $cidr (ternary "128" "32" (contains ":" $cidr)) }}{{ end }}
{{- $out = append $out $cidr }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Volumes of the operator and the dispatchers: seal key, /tmp, Redis CA. */}}
{{- define "tidings.volumes" -}}
- name: seal-key
  secret:
    secretName: {{ include "tidings.sealKeySecret" . }}
    defaultMode: 0440
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- include "tidings.redisVolumes" . }}
{{- end }}

{{/* The external Redis's CA and client certificate, for every process that uses Redis. */}}
{{- define "tidings.redisVolumes" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.externalRedis.tls.caSecret }}
    defaultMode: 0444
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.clientCertSecret }}
- name: redis-client
  secret:
    secretName: {{ .Values.externalRedis.tls.clientCertSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "tidings.volumeMounts" -}}
- name: seal-key
  mountPath: /etc/tidings/seal
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- include "tidings.redisVolumeMounts" . }}
{{- end }}

{{- define "tidings.redisVolumeMounts" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.caSecret }}
- name: redis-ca
  mountPath: /etc/tidings/redis-ca
  readOnly: true
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.clientCertSecret }}
- name: redis-client
  mountPath: {{ include "tidings.redisClientCertDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Scheduling fields of a pod spec. Call with the component's values. */}}
{{- define "tidings.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{- define "tidings.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The operator's cluster-scoped rules (operator/src/tidings/operator/rbac.py CLUSTER_RULES, none, and
PEERING_CLUSTER_RULES when watching all namespaces). Kopf's CRD and Namespace
scanning is off, so it needs no list/watch on either.
*/}}
{{- define "tidings.operatorClusterRules" -}}
{{- if and .Values.operator.peering.enabled (not .Values.operator.watchNamespaces) }}
# The cluster-wide peering object (all namespaces watched).
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [list, watch, patch, create]
{{- end }}
{{- end }}

{{/* Combinations the schema cannot express, each failing with the fix. */}}
{{- define "tidings.validate" -}}
{{- $ext := .Values.externalRedis }}
{{- if and (not .Values.redis.enabled) (not $ext.url) (not $ext.urlSecret.name) }}
{{- fail "externalRedis: redis.enabled is false, so set externalRedis.url (e.g. redis://my-redis:6379/0) or externalRedis.urlSecret.name" }}
{{- end }}
{{- if and .Values.redis.enabled (or $ext.url $ext.urlSecret.name) }}
{{- fail "externalRedis is set but redis.enabled is true (the bundled Redis would be used): set redis.enabled=false" }}
{{- end }}
{{- if and $ext.url $ext.urlSecret.name }}
{{- fail "externalRedis: set url or urlSecret.name, not both" }}
{{- end }}
{{- if and $ext.tls.caSecret (not (hasPrefix "rediss://" $ext.url)) (not $ext.urlSecret.name) }}
{{- fail "externalRedis.tls.caSecret: TLS needs a rediss:// URL in externalRedis.url" }}
{{- end }}
{{- if and $ext.tls.clientCertSecret (not (hasPrefix "rediss://" $ext.url)) (not $ext.urlSecret.name) }}
{{- fail "externalRedis.tls.clientCertSecret: TLS needs a rediss:// URL in externalRedis.url" }}
{{- end }}
{{- if and .Values.dispatcher.autoscaling.enabled (lt (int .Values.dispatcher.autoscaling.maxReplicas) (int .Values.dispatcher.autoscaling.minReplicas)) }}
{{- fail "dispatcher.autoscaling.maxReplicas must be at least minReplicas" }}
{{- end }}
{{- if and .Values.console.enabled (eq .Values.console.auth "proxy") (not .Values.console.trustedProxies) }}
{{- fail "console.trustedProxies: with console.auth=proxy, list the proxy's CIDRs (e.g. [10.0.0.0/8]); identity headers from anyone else are never believed" }}
{{- end }}
{{- if and .Values.sealKey.existingSecret (not .Values.sealKey.existingSecretKey) }}
{{- fail "sealKey.existingSecretKey: name the key holding the seal key" }}
{{- end }}
{{- end }}
