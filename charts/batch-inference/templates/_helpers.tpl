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
{{- if $.Values.serve.maxRequestBytes -}}
{{- $_ := set $args "max_request_bytes" ($.Values.serve.maxRequestBytes | int64) -}}
{{- end -}}
{{- if $.Values.serve.maxArrowRowsPerRequest -}}
{{- $_ := set $args "max_arrow_rows_per_request" ($.Values.serve.maxArrowRowsPerRequest | int64) -}}
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

{{/* Worker pods ---------------------------------------------------------------------------- */}}

{{/*
The worker's pod template: the one source of both worker modes, the plain Deployment
(worker-deployment.yaml) and the Temporal Worker Controller's WorkerDeployment
(worker-controller.yaml). They differ only in the Temporal connection env and volumes, which the
controller injects itself (workerTemporalEnv below).
*/}}
{{- define "batch-inference.workerPodTemplate" -}}
{{- $authPath := include "batch-inference.authMountPath" . -}}
{{- $objectStore := .Values.worker.objectStore -}}
metadata:
  labels:
    {{- include "batch-inference.labels" . | nindent 4 }}
    app.kubernetes.io/component: worker
    {{- with .Values.worker.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.worker.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "batch-inference.workerServiceAccountName" . }}
  automountServiceAccountToken: {{ .Values.worker.automountServiceAccountToken }}
  {{- with (include "batch-inference.imagePullSecrets" .) }}{{ . | nindent 2 }}{{ end }}
  # Above WORKER_GRACEFUL_SHUTDOWN_S: SIGTERM lets running activities finish first.
  terminationGracePeriodSeconds: {{ include "batch-inference.terminationGracePeriodSeconds" . }}
  securityContext:
    {{- toYaml .Values.worker.podSecurityContext | nindent 4 }}
  containers:
    - name: worker
      image: {{ include "batch-inference.image" (list .Values.worker.image .) }}
      imagePullPolicy: {{ .Values.worker.image.pullPolicy }}
      {{- with .Values.worker.command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.worker.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        {{- include "batch-inference.workerTemporalEnv" . | nindent 8 }}
        - name: SERVE_URL
          value: {{ include "batch-inference.serveUrl" . | quote }}
        # The bearer token the worker sends: a file from the mounted Secret, re-read on change.
        - name: SERVE_AUTH_TOKEN_FILE
          value: {{ printf "%s/%s" $authPath .Values.auth.tokenKey }}
        - name: SERVE_TIMEOUT_S
          value: {{ .Values.worker.serveTimeoutSeconds | quote }}
        - name: SERVE_MAX_CONNECTIONS
          value: {{ .Values.worker.serveMaxConnections | quote }}
        {{- with .Values.worker.adaptiveConcurrency }}
        {{- /* The worker refuses other bounds at start: say so at render time instead. */}}
        {{- if and .max (or (lt (int .max) (int .min)) (gt (int .max) (int $.Values.worker.serveMaxConnections))) }}
        {{- fail (printf "worker.adaptiveConcurrency needs min <= max <= worker.serveMaxConnections, got %v, %v, %v" .min .max $.Values.worker.serveMaxConnections) }}
        {{- end }}
        {{- if gt (int .min) (int $.Values.worker.serveMaxConnections) }}
        {{- fail (printf "worker.adaptiveConcurrency.min (%v) is above worker.serveMaxConnections (%v)" .min $.Values.worker.serveMaxConnections) }}
        {{- end }}
        - name: SERVE_ADAPTIVE_CONCURRENCY
          value: {{ .enabled | quote }}
        - name: SERVE_CONCURRENCY_MIN
          value: {{ .min | quote }}
        {{- if .max }}
        - name: SERVE_CONCURRENCY_MAX
          value: {{ .max | quote }}
        {{- end }}
        {{- end }}
        - name: SERVE_WIRE
          value: {{ .Values.worker.serveWire | quote }}
        - name: WORKER_GRACEFUL_SHUTDOWN_S
          value: {{ .Values.worker.gracefulShutdownSeconds | quote }}
        - name: WORKER_MAX_CONCURRENT_ACTIVITIES
          value: {{ .Values.worker.maxConcurrentActivities | quote }}
        - name: WORKER_EAGER_ACTIVITIES
          value: {{ .Values.worker.eagerActivities | quote }}
        - name: WORKER_METRICS_HOST
          value: "0.0.0.0"
        - name: WORKER_METRICS_PORT
          value: {{ .Values.worker.metricsPort | quote }}
        - name: PYTHONUNBUFFERED
          value: "1"
        {{- /* Object storage: read by the storage libraries (botocore under s3fs; gcsfs, google-auth). */}}
        {{- with $objectStore.s3.endpointUrl }}
        - name: AWS_ENDPOINT_URL_S3
          value: {{ . | quote }}
        {{- end }}
        {{- with $objectStore.s3.region }}
        - name: AWS_DEFAULT_REGION
          value: {{ . | quote }}
        {{- end }}
        {{- with $objectStore.gcs.endpointUrl }}
        - name: STORAGE_EMULATOR_HOST
          value: {{ . | quote }}
        # An emulator speaks no gRPC: gcsfs's zonal/HNS bucket probe would stall every call.
        - name: GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
          value: "false"
        {{- end }}
        {{- if $objectStore.gcs.credentialsSecret }}
        - name: GOOGLE_APPLICATION_CREDENTIALS
          value: {{ printf "%s/%s" (include "batch-inference.gcsCredentialsMountPath" .) $objectStore.gcs.credentialsKey }}
        {{- end }}
        {{- with .Values.worker.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $objectStore.credentialsSecret }}
      # Every key of this Secret as an env var (static object-storage keys); env above wins.
      envFrom:
        - secretRef:
            name: {{ . }}
      {{- end }}
      ports:
        - name: metrics
          containerPort: {{ .Values.worker.metricsPort }}
      # The worker's probes on its metrics port (routes: services/constants.py; what each
      # checks: services/worker/probes.py). Started: ready once. Live: its event loop answers,
      # whatever Temporal does (an outage never restarts it). Ready: its SDK worker runs and
      # Temporal answers on the connection its pollers use, so a rollout (maxUnavailable 0)
      # waits for new pods that can work before it stops old ones.
      startupProbe:
        httpGet: {path: /startupz, port: metrics}
        periodSeconds: 2
        failureThreshold: {{ div .Values.worker.probes.startupSeconds 2 | max 1 }}
      livenessProbe:
        httpGet: {path: /livez, port: metrics}
        periodSeconds: {{ .Values.worker.probes.periodSeconds }}
        timeoutSeconds: 5
        failureThreshold: {{ .Values.worker.probes.failureThreshold }}
      readinessProbe:
        httpGet: {path: /readyz, port: metrics}
        periodSeconds: {{ .Values.worker.probes.periodSeconds }}
        timeoutSeconds: 5
      resources:
        {{- toYaml .Values.worker.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.worker.securityContext | nindent 8 }}
      volumeMounts:
        - name: serve-auth
          mountPath: {{ $authPath }}
          readOnly: true
        # readOnlyRootFilesystem: the only writable scratch space.
        - name: tmp
          mountPath: /tmp
        {{- with (include "batch-inference.workerTemporalVolumeMounts" . | trim) }}{{ . | nindent 8 }}{{ end }}
        {{- if .Values.worker.dataVolume.existingClaim }}
        - name: data
          mountPath: {{ .Values.worker.dataVolume.mountPath }}
        {{- end }}
        {{- if $objectStore.gcs.credentialsSecret }}
        - name: gcs-credentials
          mountPath: {{ include "batch-inference.gcsCredentialsMountPath" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.worker.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- include "batch-inference.authVolume" . | nindent 4 }}
    - name: tmp
      emptyDir: {sizeLimit: 1Gi}
    {{- with (include "batch-inference.workerTemporalVolumes" . | trim) }}{{ . | nindent 4 }}{{ end }}
    {{- if .Values.worker.dataVolume.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.worker.dataVolume.existingClaim }}
    {{- end }}
    {{- with $objectStore.gcs }}
    {{- if .credentialsSecret }}
    # Only the credentials file: a missing key fails the mount, so the pod does not start.
    - name: gcs-credentials
      secret:
        secretName: {{ .credentialsSecret }}
        items:
          - key: {{ .credentialsKey }}
            path: {{ .credentialsKey }}
        defaultMode: 0440
    {{- end }}
    {{- end }}
    {{- with .Values.worker.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.worker.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.worker.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.worker.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.worker.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Temporal Worker Controller mode ----------------------------------------------------------

With worker.versioning.controller.enabled the controller (v1.8.1) runs the worker pods: one
Deployment per version, made from the WorkerDeployment's pod template plus, in every container
(internal/k8s/deployments.go, ApplyControllerPodSpecModifications): TEMPORAL_ADDRESS and
TEMPORAL_TLS_SERVER_NAME (from the Connection), TEMPORAL_NAMESPACE, TEMPORAL_DEPLOYMENT_NAME
("<k8s namespace>/<WorkerDeployment name>"), TEMPORAL_WORKER_BUILD_ID; with mTLS, TEMPORAL_TLS
and the client cert/key paths of the Connection's Secret, mounted as volume "temporal-tls" at
/etc/temporal/tls; with an API key, TEMPORAL_API_KEY from the Secret. The pod template leaves
these to it: the same name twice in one container would be ambiguous, and a second
"temporal-tls" volume invalid. */}}

{{- define "batch-inference.workerControllerTlsMountPath" -}}
/etc/temporal/tls
{{- end -}}

{{- define "batch-inference.workerConnectionName" -}}
{{- default (printf "%s-temporal-connection" (include "batch-inference.fullname" .)) .Values.worker.versioning.controller.existingConnection -}}
{{- end -}}

{{/* How the Connection authenticates: "mtls", "apiKey" or "" (none, or not controller mode).
A Connection takes one of the two, and the controller reads the mTLS Secret's fixed keys. */}}
{{- define "batch-inference.workerControllerAuth" -}}
{{- $tls := .Values.temporal.tls -}}
{{- $apiKey := .Values.temporal.apiKey -}}
{{- if and .Values.worker.versioning.controller.enabled (not .Values.temporalDev.enabled) -}}
{{- $mtls := and $tls.enabled $tls.existingSecret $tls.certKey $tls.keyKey -}}
{{- if and $mtls $apiKey.existingSecret -}}
{{- fail "worker.versioning.controller: a Connection takes mTLS (temporal.tls.existingSecret with certKey/keyKey) or an API key (temporal.apiKey.existingSecret), not both" -}}
{{- else if $mtls -}}
{{- if or (ne $tls.certKey "tls.crt") (ne $tls.keyKey "tls.key") (not (has $tls.caKey (list "" "ca.crt"))) -}}
{{- fail (printf "worker.versioning.controller: the controller reads the mTLS Secret's keys tls.crt, tls.key and ca.crt; temporal.tls.certKey/keyKey/caKey are %q/%q/%q" $tls.certKey $tls.keyKey $tls.caKey) -}}
{{- end -}}
mtls
{{- else if $apiKey.existingSecret -}}
apiKey
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The worker container's Temporal env. Plain Deployment: the connection, and with Worker
Versioning this pod's version (the image tag). Controller mode: only what the controller does
not inject (above): the task queue, TLS on without mTLS, the CA file, the API key as a file
(re-read at each connect, so a rotated key is picked up without a restart; it wins over the
controller's TEMPORAL_API_KEY, from the same Secret key). */}}
{{- define "batch-inference.workerTemporalEnv" -}}
{{- if not .Values.worker.versioning.controller.enabled -}}
{{ include "batch-inference.temporalEnv" . }}
{{- if .Values.worker.versioning.enabled }}
# This pod is the image tag's version of the Worker Deployment.
- name: TEMPORAL_DEPLOYMENT_NAME
  value: {{ include "batch-inference.workerDeploymentName" . | quote }}
- name: TEMPORAL_BUILD_ID
  value: {{ include "batch-inference.workerBuildId" . | quote }}
{{- end }}
{{- else -}}
{{- $tls := .Values.temporal.tls -}}
{{- $apiKey := .Values.temporal.apiKey -}}
{{- $auth := include "batch-inference.workerControllerAuth" . -}}
# The Worker Controller adds the address, namespace, Worker Deployment version and credentials.
- name: TEMPORAL_TASK_QUEUE
  value: {{ .Values.temporal.taskQueue | quote }}
{{- if and (not .Values.temporalDev.enabled) (or $tls.enabled $apiKey.existingSecret) }}
{{- if ne $auth "mtls" }}
- name: TEMPORAL_TLS
  value: "true"
{{- end }}
{{- if and $tls.existingSecret $tls.caKey }}
- name: TEMPORAL_TLS_SERVER_CA_CERT_PATH
  value: {{ printf "%s/%s" (ternary (include "batch-inference.workerControllerTlsMountPath" .) (include "batch-inference.temporalTlsMountPath" .) (eq $auth "mtls")) $tls.caKey }}
{{- end }}
{{- if $apiKey.existingSecret }}
- name: TEMPORAL_API_KEY_FILE
  value: {{ printf "%s/%s" (include "batch-inference.temporalApiKeyMountPath" .) $apiKey.key }}
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* With the controller's mTLS it mounts the Secret itself (volume "temporal-tls"). */}}
{{- define "batch-inference.workerTemporalVolumeMounts" -}}
{{- if ne (include "batch-inference.workerControllerAuth" .) "mtls" -}}
{{ include "batch-inference.temporalVolumeMounts" . }}
{{- end -}}
{{- end -}}

{{- define "batch-inference.workerTemporalVolumes" -}}
{{- if ne (include "batch-inference.workerControllerAuth" .) "mtls" -}}
{{ include "batch-inference.temporalVolumes" . }}
{{- end -}}
{{- end -}}
