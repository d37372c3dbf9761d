{{/* Names --------------------------------------------------------------------------------- */}}

{{- define "batch-inference.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: the release name, plus the chart name unless the release name already contains it.
Not truncated silently: the RayService check below fails with a clear message instead.
*/}}
{{- define "batch-inference.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "batch-inference.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
RayService name. KubeRay derives longer names from it (<name>-raycluster-xxxxx-head-svc, ...),
so it rejects names over 47 characters; fail at render time rather than at apply time.
*/}}
{{- define "batch-inference.rayServiceName" -}}
{{- $name := include "batch-inference.fullname" . -}}
{{- if gt (len $name) 47 -}}
{{- fail (printf "RayService name %q is %d characters; KubeRay allows at most 47. Use a shorter release name or set fullnameOverride." $name (len $name)) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "batch-inference.workerName" -}}
{{- printf "%s-worker" (include "batch-inference.fullname" .) -}}
{{- end -}}

{{- define "batch-inference.temporalDevName" -}}
{{- printf "%s-temporal" (include "batch-inference.fullname" .) -}}
{{- end -}}

{{- define "batch-inference.clientConfigName" -}}
{{- printf "%s-client" (include "batch-inference.fullname" .) -}}
{{- end -}}

{{- define "batch-inference.workerServiceAccountName" -}}
{{- if .Values.worker.serviceAccount.create -}}
{{- default (include "batch-inference.workerName" .) .Values.worker.serviceAccount.name -}}
{{- else -}}
{{- required "worker.serviceAccount.name is required when worker.serviceAccount.create is false" .Values.worker.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels -------------------------------------------------------------------------------- */}}

{{- define "batch-inference.selectorLabels" -}}
app.kubernetes.io/name: {{ include "batch-inference.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "batch-inference.labels" -}}
helm.sh/chart: {{ include "batch-inference.chart" . }}
{{ include "batch-inference.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: batch-inference
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of Ray pod templates: the standard set without app.kubernetes.io/name, which KubeRay
sets on Ray pods itself ("kuberay") and may select on.
*/}}
{{- define "batch-inference.rayPodLabels" -}}
{{- omit (include "batch-inference.labels" . | fromYaml) "app.kubernetes.io/name" | toYaml }}
app.kubernetes.io/component: ray
{{- end -}}

{{/* Pods of one component: `include "batch-inference.componentSelector" (list . "worker")`. */}}
{{- define "batch-inference.componentSelector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Images ------------------------------------------------------------------------------- */}}

{{- define "batch-inference.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* Wiring ------------------------------------------------------------------------------- */}}

{{/* The RayService's stable Serve Service; it survives zero-downtime cluster upgrades. */}}
{{- define "batch-inference.serveUrl" -}}
{{- if .Values.worker.serveUrl -}}
{{- .Values.worker.serveUrl -}}
{{- else -}}
{{- printf "http://%s-serve-svc.%s.svc:%v" (include "batch-inference.rayServiceName" .) .Release.Namespace (include "batch-inference.servePort" .) -}}
{{- end -}}
{{- end -}}

{{- define "batch-inference.temporalAddress" -}}
{{- if .Values.temporalDev.enabled -}}
{{- printf "%s.%s.svc:%v" (include "batch-inference.temporalDevName" .) .Release.Namespace .Values.temporalDev.port -}}
{{- else -}}
{{- required "temporal.address is required (host:port of the Temporal frontend), or set temporalDev.enabled=true" .Values.temporal.address -}}
{{- end -}}
{{- end -}}

{{- define "batch-inference.authSecretName" -}}
{{- default (printf "%s-serve-auth" (include "batch-inference.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "batch-inference.acceptedTokensKey" -}}
{{- default .Values.auth.tokenKey .Values.auth.acceptedTokensKey -}}
{{- end -}}

{{/* Where the auth Secret is mounted (the whole Secret, so rotations propagate). */}}
{{- define "batch-inference.authMountPath" -}}
/var/run/secrets/batch-inference/serve-auth
{{- end -}}

{{- define "batch-inference.temporalTlsMountPath" -}}
/var/run/secrets/batch-inference/temporal-tls
{{- end -}}

{{- define "batch-inference.temporalApiKeyMountPath" -}}
/var/run/secrets/batch-inference/temporal-api-key
{{- end -}}

{{- define "batch-inference.gcsCredentialsMountPath" -}}
/var/run/secrets/batch-inference/gcs-credentials
{{- end -}}

{{/* The Temporal connection of a container (workers, the schedules Job): env, then the
mounts and volumes of its TLS and API-key Secrets (none with temporalDev). */}}
{{- define "batch-inference.temporalEnv" -}}
{{- $tls := .Values.temporal.tls -}}
{{- $apiKey := .Values.temporal.apiKey -}}
- name: TEMPORAL_ADDRESS
  value: {{ include "batch-inference.temporalAddress" . | quote }}
- name: TEMPORAL_NAMESPACE
  value: {{ .Values.temporal.namespace | quote }}
- name: TEMPORAL_TASK_QUEUE
  value: {{ .Values.temporal.taskQueue | quote }}
{{- if and (not .Values.temporalDev.enabled) (or $tls.enabled $apiKey.existingSecret) }}
- name: TEMPORAL_TLS
  value: "true"
{{- if $tls.serverName }}
- name: TEMPORAL_TLS_SERVER_NAME
  value: {{ $tls.serverName | quote }}
{{- end }}
{{- if $tls.existingSecret }}
{{- if and $tls.certKey $tls.keyKey }}
- name: TEMPORAL_TLS_CLIENT_CERT_PATH
  value: {{ printf "%s/%s" (include "batch-inference.temporalTlsMountPath" .) $tls.certKey }}
- name: TEMPORAL_TLS_CLIENT_KEY_PATH
  value: {{ printf "%s/%s" (include "batch-inference.temporalTlsMountPath" .) $tls.keyKey }}
{{- end }}
{{- if $tls.caKey }}
- name: TEMPORAL_TLS_SERVER_CA_CERT_PATH
  value: {{ printf "%s/%s" (include "batch-inference.temporalTlsMountPath" .) $tls.caKey }}
{{- end }}
{{- end }}
{{- if $apiKey.existingSecret }}
- name: TEMPORAL_API_KEY_FILE
  value: {{ printf "%s/%s" (include "batch-inference.temporalApiKeyMountPath" .) $apiKey.key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "batch-inference.temporalVolumeMounts" -}}
{{- $tls := .Values.temporal.tls -}}
{{- $apiKey := .Values.temporal.apiKey -}}
{{- if and $tls.existingSecret (not .Values.temporalDev.enabled) }}
- name: temporal-tls
  mountPath: {{ include "batch-inference.temporalTlsMountPath" . }}
  readOnly: true
{{- end }}
{{- if and $apiKey.existingSecret (not .Values.temporalDev.enabled) }}
- name: temporal-api-key
  mountPath: {{ include "batch-inference.temporalApiKeyMountPath" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "batch-inference.temporalVolumes" -}}
{{- $tls := .Values.temporal.tls -}}
{{- $apiKey := .Values.temporal.apiKey -}}
{{- if and $tls.existingSecret (not .Values.temporalDev.enabled) }}
- name: temporal-tls
  secret:
    secretName: {{ $tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if and $apiKey.existingSecret (not .Values.temporalDev.enabled) }}
- name: temporal-api-key
  secret:
    secretName: {{ $apiKey.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "batch-inference.terminationGracePeriodSeconds" -}}
{{- add .Values.worker.gracefulShutdownSeconds .Values.worker.terminationGraceMarginSeconds -}}
{{- end -}}

{{/* Serve config ------------------------------------------------------------------------- */}}

{{/* files/serve-config.yaml, parsed (the same file the local stack deploys). */}}
{{- define "batch-inference.serveConfigBase" -}}
{{- $raw := .Files.Get "files/serve-config.yaml" -}}
{{- if not $raw -}}
{{- fail "files/serve-config.yaml is missing from the chart" -}}
{{- end -}}
{{- $cfg := $raw | fromYaml -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "files/serve-config.yaml is not valid YAML: %s" $cfg.Error) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{- define "batch-inference.servePort" -}}
{{- $cfg := include "batch-inference.serveConfigBase" . | fromYaml -}}
{{- $http := $cfg.http_options | default dict -}}
{{- $http.port | default 8000 | int -}}
{{- end -}}

{{/*
serveConfigV2: the shared Serve config with
  - http_options.host 0.0.0.0 (the local stack binds to loopback instead),
  - serve.applicationArgs merged into each application's args,
  - serve.deployments.<name> merged into the deployment of that name: scalars replace, maps
    (user_config, autoscaling_config, ray_actor_options) merge key by key; autoscaling_config
    without num_replicas drops the file's fixed num_replicas.
Unknown deployment names fail. Auth tokens never enter this config.
*/}}
{{- define "batch-inference.serveConfig" -}}
{{- $cfg := include "batch-inference.serveConfigBase" . | fromYaml -}}
{{- $http := $cfg.http_options | default dict -}}
{{- $_ := set $http "host" "0.0.0.0" -}}
{{- $_ := set $cfg "http_options" $http -}}
{{- $overrides := .Values.serve.deployments | default dict -}}
{{- $known := list -}}
{{- range $app := $cfg.applications -}}
{{- $args := $app.args | default dict -}}
{{- range $k, $v := $.Values.serve.applicationArgs -}}
{{- $_ := set $args $k $v -}}
{{- end -}}
{{- $_ := set $app "args" $args -}}
{{- range $d := $app.deployments -}}
{{- $known = append $known $d.name -}}
{{- $o := get $overrides $d.name -}}
{{- if $o -}}
{{- if and (hasKey $o "autoscaling_config") (not (hasKey $o "num_replicas")) -}}
{{- $_ := unset $d "num_replicas" -}}
{{- end -}}
{{- range $k, $v := $o -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $d $k)) -}}
{{- $m := get $d $k -}}
{{- range $k2, $v2 := $v -}}
{{- $_ := set $m $k2 $v2 -}}
{{- end -}}
{{- else -}}
{{- $_ := set $d $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := $overrides -}}
{{- if not (has $name $known) -}}
{{- fail (printf "serve.deployments.%s: files/serve-config.yaml has no deployment named %q (known: %s)" $name $name (join ", " $known)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod fragments ------------------------------------------------------------------------ */}}

{{- define "batch-inference.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* The auth Secret as a volume: group-readable only (pods set fsGroup). */}}
{{- define "batch-inference.authVolume" -}}
- name: serve-auth
  secret:
    secretName: {{ include "batch-inference.authSecretName" . }}
    defaultMode: 0440
{{- end -}}

{{/* Env + mounts of a Ray container (head and workers). */}}
{{- define "batch-inference.rayContainerCommon" -}}
image: {{ include "batch-inference.image" (list .Values.serve.image .) }}
imagePullPolicy: {{ .Values.serve.image.pullPolicy }}
env:
  # Serve replicas read the valid bearer tokens from this file (the mounted Secret).
  - name: SERVE_AUTH_TOKENS_FILE
    value: {{ printf "%s/%s" (include "batch-inference.authMountPath" .) (include "batch-inference.acceptedTokensKey" .) }}
  - name: RAY_USAGE_STATS_ENABLED
    value: "0"
  {{- if .Values.serve.highThroughput.enabled }}
  # Ray Serve's high-throughput mode: HAProxy as the ingress on the Serve port, direct gRPC
  # between replicas (the env of services/constants.py SERVE_HIGH_THROUGHPUT_ENV).
  - name: RAY_SERVE_ENABLE_HA_PROXY
    value: "1"
  - name: RAY_SERVE_THROUGHPUT_OPTIMIZED
    value: "1"
  {{- end }}
  {{- with .Values.serve.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumeMounts:
  - name: serve-auth
    mountPath: {{ include "batch-inference.authMountPath" . }}
    readOnly: true
  - name: shm
    mountPath: /dev/shm
securityContext:
  {{- toYaml .Values.serve.securityContext | nindent 2 }}
{{- end -}}

{{/* Worker Versioning: the Worker Deployment's name (no dots: Temporal writes a version as
"<deployment>.<build id>") and this release's build id, the worker image's tag. */}}
{{- define "batch-inference.workerDeploymentName" -}}
{{- default (include "batch-inference.workerName" .) .Values.worker.versioning.deploymentName | replace "." "-" -}}
{{- end -}}

{{- define "batch-inference.workerBuildId" -}}
{{- default .Chart.AppVersion .Values.worker.image.tag -}}
{{- end -}}
