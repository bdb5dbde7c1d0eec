{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "shardyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shardyard.fullname" -}}
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

{{/* <fullname>-<suffix>, kept within 63 characters. */}}
{{- define "shardyard.componentName" -}}
{{- printf "%s-%s" (include "shardyard.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "shardyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The namespace of every object and of the flow-run Jobs. A values file names its
environment's namespace; installing it into another namespace is refused, because the
worker's Role, the base job template and the release record must agree.
*/}}
{{- define "shardyard.namespace" -}}
{{- $ns := default .Release.Namespace .Values.namespace }}
{{- if ne $ns .Release.Namespace }}
{{- fail (printf "values set namespace %q but the release namespace is %q: install with -n %s" $ns .Release.Namespace $ns) }}
{{- end }}
{{- $ns }}
{{- end }}

{{/* Labels --------------------------------------------------------------------------- */}}

{{- define "shardyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shardyard.labels" -}}
helm.sh/chart: {{ include "shardyard.chart" . }}
{{ include "shardyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shardyard
shardyard/environment: {{ .Values.environment }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Images and service accounts ------------------------------------------------------ */}}

{{- define "shardyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "shardyard.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository .Values.worker.image.tag }}
{{- end }}

{{- define "shardyard.workerServiceAccountName" -}}
{{- include "shardyard.componentName" (dict "root" . "suffix" "worker") }}
{{- end }}

{{- define "shardyard.flowRunServiceAccountName" -}}
{{- default (include "shardyard.componentName" (dict "root" . "suffix" "flow-run")) .Values.flowRun.serviceAccount.name }}
{{- end }}

{{- define "shardyard.baseJobTemplateName" -}}
{{- include "shardyard.componentName" (dict "root" . "suffix" "base-job-template") }}
{{- end }}

{{/* imagePullSecrets of a pod spec, or nothing when none are configured. */}}
{{- define "shardyard.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Endpoints ------------------------------------------------------------------------ */}}

{{- define "shardyard.prefectApiUrl" -}}
{{- required "prefect.apiUrl is required: the Prefect API the worker and flow runs talk to" .Values.prefect.apiUrl }}
{{- end }}

{{- define "shardyard.minioServiceName" -}}
{{- include "shardyard.componentName" (dict "root" . "suffix" "minio") }}
{{- end }}

{{- define "shardyard.postgresqlServiceName" -}}
{{- include "shardyard.componentName" (dict "root" . "suffix" "postgresql") }}
{{- end }}

{{/* The S3 endpoint: explicit, else the chart's own MinIO when it is enabled, else none. */}}
{{- define "shardyard.storageEndpointUrl" -}}
{{- if .Values.storage.endpointUrl }}
{{- .Values.storage.endpointUrl }}
{{- else if .Values.minio.enabled }}
{{- printf "http://%s.%s.svc:9000" (include "shardyard.minioServiceName" .) (include "shardyard.namespace" .) }}
{{- end }}
{{- end }}

{{/* Pod hardening -------------------------------------------------------------------- */}}

{{/* The UID/GID of the shardyard image: APP_UID in the Dockerfile, runAsUser in
k8s/base-job-template.json. */}}
{{- define "shardyard.appUid" -}}
10001
{{- end }}

{{/* Pod securityContext for a UID (dict "uid" N). */}}
{{- define "shardyard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container securityContext: no privilege escalation, no capabilities, read-only root. */}}
{{- define "shardyard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/* Prefect API settings of the worker and the registration Job; credentials by reference. */}}
{{- define "shardyard.prefectEnv" -}}
- name: PREFECT_API_URL
  value: {{ include "shardyard.prefectApiUrl" . | quote }}
{{- with .Values.prefect.apiKeySecret }}
{{- if .name }}
- name: PREFECT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.prefect.authStringSecret }}
{{- if .name }}
- name: PREFECT_API_AUTH_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

{{/* The work-pool base job template: k8s/base-job-template.json with this environment's
defaults filled in. Prefect's own {{ placeholders }} in the file are data here, not
Helm templates. */}}
{{- define "shardyard.baseJobTemplate" -}}
{{- $template := .Files.Get "files/base-job-template.json" | fromJson }}
{{- $variables := $template.variables.properties }}
{{- $env := dict "SHARDYARD_ENV" .Values.environment "SHARDYARD_STORAGE_URL" .Values.storage.url }}
{{- with (include "shardyard.storageEndpointUrl" .) }}
{{- $_ := set $env "AWS_ENDPOINT_URL" . }}
{{- end }}
{{- with .Values.storage.region }}
{{- $_ := set $env "AWS_REGION" . }}
{{- end }}
{{- if and .Values.prefectBlocks.enabled .Values.prefectBlocks.resultStorage.enabled }}
{{- $_ := set $env "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK" (printf "s3-bucket/%s-results" (include "shardyard.blocksName" .)) }}
{{- $_ := set $env "PREFECT_RESULTS_PERSIST_BY_DEFAULT" "true" }}
{{- end }}
{{- range $name, $value := .Values.flowRun.extraEnv }}
{{- $_ := set $env $name (toString $value) }}
{{- end }}
{{- $pullSecrets := list }}
{{- range .Values.imagePullSecrets }}
{{- $pullSecrets = append $pullSecrets (dict "name" .) }}
{{- end }}
{{- $defaults := dict
  "env" $env
  "namespace" (include "shardyard.namespace" .)
  "image" (include "shardyard.image" .)
  "image_pull_policy" .Values.image.pullPolicy
  "image_pull_secrets" $pullSecrets
  "service_account_name" (include "shardyard.flowRunServiceAccountName" .)
  "backoff_limit" (int .Values.flowRun.backoffLimit)
  "finished_job_ttl" (int .Values.flowRun.finishedJobTtlSeconds)
  "pod_watch_timeout_seconds" (int .Values.flowRun.podWatchTimeoutSeconds)
  "cpu_request" (toString .Values.flowRun.resources.requests.cpu)
  "memory_request" (toString .Values.flowRun.resources.requests.memory)
  "cpu_limit" (toString .Values.flowRun.resources.limits.cpu)
  "memory_limit" (toString .Values.flowRun.resources.limits.memory)
  "scratch_size_limit" (toString .Values.flowRun.scratchSizeLimit)
  "database_secret_name" .Values.secrets.database.name
  "database_secret_key" .Values.secrets.database.key
  "storage_secret_name" .Values.secrets.storage.name
  "storage_access_key_id_key" .Values.secrets.storage.accessKeyIdKey
  "storage_secret_access_key_key" .Values.secrets.storage.secretAccessKeyKey
}}
{{- range $name, $default := $defaults }}
{{- $_ := set (index $variables $name) "default" $default }}
{{- end }}
{{- $podLabels := $template.job_configuration.job_manifest.spec.template.metadata.labels }}
{{- $_ := set $podLabels "app.kubernetes.io/instance" .Release.Name }}
{{- $_ := set $podLabels "shardyard/environment" .Values.environment }}
{{- toPrettyJson $template }}
{{- end }}

{{/* Prefix of the prefect-aws block names: prefectBlocks.name, else shardyard-<environment>. */}}
{{- define "shardyard.blocksName" -}}
{{- default (printf "shardyard-%s" .Values.environment) .Values.prefectBlocks.name }}
{{- end }}

{{- define "shardyard.automationsName" -}}
{{- include "shardyard.componentName" (dict "root" . "suffix" "automations") }}
{{- end }}

{{/* The stages of prefect.yaml whose size comes from flowRun.stages, in a fixed order. */}}
{{- define "shardyard.stages" -}}
ingest transform shard shard-part
{{- end }}

{{/* SHARDYARD_<STAGE>_{CPU,MEMORY}_{REQUEST,LIMIT} of the registration Job, which prefect.yaml
reads into each stage deployment's job_variables. */}}
{{- define "shardyard.stageSizeEnv" -}}
{{- range $stage := splitList " " (include "shardyard.stages" .) }}
{{- $size := index $.Values.flowRun.stages $stage }}
{{- $prefix := printf "SHARDYARD_%s" ($stage | upper | replace "-" "_") }}
- name: {{ $prefix }}_CPU_REQUEST
  value: {{ $size.requests.cpu | toString | quote }}
- name: {{ $prefix }}_CPU_LIMIT
  value: {{ $size.limits.cpu | toString | quote }}
- name: {{ $prefix }}_MEMORY_REQUEST
  value: {{ $size.requests.memory | toString | quote }}
- name: {{ $prefix }}_MEMORY_LIMIT
  value: {{ $size.limits.memory | toString | quote }}
{{- end }}
{{- end }}
