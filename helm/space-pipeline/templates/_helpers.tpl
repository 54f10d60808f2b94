{{/* Chart name. */}}
{{- define "space-pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart>, unless the release name already contains the chart name. */}}
{{- define "space-pipeline.fullname" -}}
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

{{- define "space-pipeline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "space-pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "space-pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "space-pipeline.labels" -}}
helm.sh/chart: {{ include "space-pipeline.chart" . }}
{{ include "space-pipeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: kafka-http-stage
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "space-pipeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "space-pipeline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "space-pipeline.image" -}}
{{- $repository := include "space-pipeline.imageRepository" . -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The metrics / health port. */}}
{{- define "space-pipeline.metricsPort" -}}
{{- .Values.config.metricsPort | default 9400 | int -}}
{{- end -}}

{{/*
One setting as an environment-variable string. Helm reads every number as float64, and
`toString` would turn 16777216 into "1.6777216e+07": whole numbers are printed as integers.
Lists are joined with ",", maps JSON-encoded.
*/}}
{{- define "space-pipeline.envValue" -}}
{{- $v := . -}}
{{- if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if kindIs "slice" $v -}}
{{- join "," $v -}}
{{- else if kindIs "map" $v -}}
{{- toJson $v -}}
{{- else -}}
{{- toString $v -}}
{{- end -}}
{{- end -}}

{{/* The image's repository: there is no public image, so the user must name the one they pushed. */}}
{{- define "space-pipeline.imageRepository" -}}
{{- required "image.repository is required: build and push the image first, see the chart README" .Values.image.repository -}}
{{- end -}}

{{/* Every required value is present; the chart fails to render otherwise. */}}
{{- define "space-pipeline.validate" -}}
{{- $_ := include "space-pipeline.imageRepository" . -}}
{{- $c := .Values.config -}}
{{- $_ = required "config.kafkaBootstrapServers is required" $c.kafkaBootstrapServers -}}
{{- if not $c.kafkaTopics -}}
{{- fail "config.kafkaTopics is required: list at least one topic" -}}
{{- end -}}
{{- $_ = required "config.spaceApiUrl is required" $c.spaceApiUrl -}}
{{- $reserved := list "PIPELINE_SHUTDOWN_TIMEOUT_S" "PIPELINE_METRICS_PORT" -}}
{{- range $name, $_ := .Values.extraConfig -}}
{{- if has $name $reserved -}}
{{- fail (printf "extraConfig must not set %s: use config.%s" $name (camelcase (lower (trimPrefix "PIPELINE_" $name)) | untitle)) -}}
{{- end -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if has .name $reserved -}}
{{- fail (printf "extraEnv must not set %s: use config.%s" .name (camelcase (lower (trimPrefix "PIPELINE_" .name)) | untitle)) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.podMonitor.enabled .Values.serviceMonitor.enabled -}}
{{- fail "enable podMonitor or serviceMonitor, not both: every series would be scraped twice" -}}
{{- end -}}
{{- end -}}

{{/*
The pod's grace period: always greater than the stage's own shutdown timeout, so SIGKILL never
cuts a drain short.
*/}}
{{- define "space-pipeline.terminationGracePeriodSeconds" -}}
{{- $shutdown := .Values.config.shutdownTimeoutS | default 20 | float64 -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) -}}
{{- $grace := .Values.terminationGracePeriodSeconds | float64 -}}
{{- if le $grace $shutdown -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.shutdownTimeoutS (%v), or the kubelet kills the pod while it still drains" $grace $shutdown) -}}
{{- end -}}
{{- $grace | int64 -}}
{{- else -}}
{{- add (ceil $shutdown | int64) (.Values.terminationGraceExtraSeconds | int64) -}}
{{- end -}}
{{- end -}}

{{/* The KEDA trigger's topic: explicit, else the only configured topic, else none (all). */}}
{{- define "space-pipeline.kedaTopic" -}}
{{- if .Values.keda.topic -}}
{{- .Values.keda.topic -}}
{{- else if eq (len .Values.config.kafkaTopics) 1 -}}
{{- first .Values.config.kafkaTopics -}}
{{- end -}}
{{- end -}}

{{/* Timing fields of one probe. */}}
{{- define "space-pipeline.probeTimings" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- with .successThreshold }}
successThreshold: {{ . }}
{{- end }}
{{- end -}}

{{/* Scrape settings shared by the PodMonitor and ServiceMonitor endpoints. */}}
{{- define "space-pipeline.scrapeSettings" -}}
{{- with .interval }}
interval: {{ . }}
{{- end }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- if .honorLabels }}
honorLabels: true
{{- end }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The chart's labels plus extra ones, as one map (no duplicate keys). Extras win, except that
selector labels always win: call with (dict "ctx" $ "extra" $map).
*/}}
{{- define "space-pipeline.labelsWith" -}}
{{- $base := include "space-pipeline.labels" .ctx | fromYaml -}}
{{- $selector := include "space-pipeline.selectorLabels" .ctx | fromYaml -}}
{{- toYaml (merge (dict) $selector (.extra | default dict) $base) -}}
{{- end -}}
