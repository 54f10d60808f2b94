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

{{/*
The chart's labels and commonLabels as one map, so no key is written twice: commonLabels may
replace app.kubernetes.io/component and the like, never a selector label.
*/}}
{{- define "space-pipeline.labels" -}}
{{- $chart := dict
  "helm.sh/chart" (include "space-pipeline.chart" .)
  "app.kubernetes.io/version" .Chart.AppVersion
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/component" "kafka-http-stage" -}}
{{- $selector := include "space-pipeline.selectorLabels" . | fromYaml -}}
{{- toYaml (merge (dict) $selector (.Values.commonLabels | default dict) $chart) -}}
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
{{- include "space-pipeline.validateSink" . -}}
{{- include "space-pipeline.validateRateLimit" . -}}
{{- include "space-pipeline.validateCredentials" . -}}
{{- include "space-pipeline.validateEgress" . -}}
{{- /* Variables the chart derives itself, and the value to set instead. */ -}}
{{- $reserved := dict "PIPELINE_SHUTDOWN_TIMEOUT_S" "config.shutdownTimeoutS" "PIPELINE_METRICS_PORT" "config.metricsPort" -}}
{{- if .Values.rateLimit.globalPerS -}}
{{- $_ = set $reserved "PIPELINE_RATE_LIMIT_PER_S" "rateLimit.globalPerS" -}}
{{- $_ = set $reserved "PIPELINE_RATE_LIMIT_BURST" "rateLimit.globalBurst" -}}
{{- end -}}
{{- range $name, $_ := .Values.extraConfig -}}
{{- if hasKey $reserved $name -}}
{{- fail (printf "extraConfig must not set %s: use %s" $name (get $reserved $name)) -}}
{{- end -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if hasKey $reserved .name -}}
{{- fail (printf "extraEnv must not set %s: use %s" .name (get $reserved .name)) -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.workload "statefulset" -}}
{{- if .Values.strategy -}}
{{- fail "strategy is a Deployment's: a StatefulSet (workload: statefulset) replaces one pod at a time" -}}
{{- end -}}
{{- else if .Values.config.kafkaGroupInstanceId -}}
{{- fail "config.kafkaGroupInstanceId needs workload: statefulset: a Deployment's pods get new names at every restart, and replicas would share one id" -}}
{{- end -}}
{{- if and .Values.podMonitor.enabled .Values.serviceMonitor.enabled -}}
{{- fail "enable podMonitor or serviceMonitor, not both: every series would be scraped twice" -}}
{{- end -}}
{{- end -}}

{{/*
Where records go, and how the stage authenticates: exactly one of config.spaceApiUrl (the HTTP
API) and config.sinkFunction (your own function), an empty string meaning unset; a bearer token or
OAuth2 client credentials, not both.
*/}}
{{- define "space-pipeline.validateSink" -}}
{{- $c := .Values.config -}}
{{- $url := or (get $c "spaceApiUrl") .Values.secrets.spaceApiUrl.existingSecret -}}
{{- $function := get $c "sinkFunction" -}}
{{- if and $url $function -}}
{{- fail "config.spaceApiUrl and config.sinkFunction are both set: set one (records go to the Space API over HTTP, or through your own function)" -}}
{{- end -}}
{{- if not (or $url $function) -}}
{{- fail "config.spaceApiUrl or config.sinkFunction is required: the Space API's URL (or secrets.spaceApiUrl, for a URL holding credentials), or your own function as package.module:function" -}}
{{- end -}}
{{- $secrets := .Values.secrets -}}
{{- $oauth2Secret := $secrets.oauth2ClientSecret.existingSecret -}}
{{- if and $secrets.spaceApiToken.existingSecret (or $oauth2Secret (get $c "oauth2TokenUrl") (get $c "oauth2ClientId")) -}}
{{- fail "secrets.spaceApiToken and OAuth2 (config.oauth2TokenUrl, config.oauth2ClientId, secrets.oauth2ClientSecret): use one way to authenticate" -}}
{{- end -}}
{{- if and $oauth2Secret (not (and (get $c "oauth2TokenUrl") (get $c "oauth2ClientId"))) -}}
{{- fail "secrets.oauth2ClientSecret also needs config.oauth2TokenUrl and config.oauth2ClientId" -}}
{{- end -}}
{{- end -}}

{{/* Pods that can run at once, outside rollouts: keda.partitionCount (the ScaledObject's maxReplicaCount) with KEDA, else replicas; at least 1. */}}
{{- define "space-pipeline.maxPods" -}}
{{- if .Values.keda.enabled -}}
{{- required "keda.partitionCount is required when keda.enabled: the total partitions of the subscribed topics (maxReplicaCount)" .Values.keda.partitionCount | int -}}
{{- else -}}
{{- max 1 (.Values.replicas | int) -}}
{{- end -}}
{{- end -}}

{{/* rateLimit.globalPerS owns PIPELINE_RATE_LIMIT_PER_S and _BURST: config must leave them unset. */}}
{{- define "space-pipeline.validateRateLimit" -}}
{{- if .Values.rateLimit.globalPerS -}}
{{- range $key := list "rateLimitPerS" "rateLimitBurst" -}}
{{- if and (hasKey $.Values.config $key) (not (kindIs "invalid" (index $.Values.config $key))) -}}
{{- fail (printf "rateLimit.globalPerS and config.%s are both set: rateLimit.globalPerS sets each pod's share of a limit for all pods, config.%s a limit per pod; use one" $key $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Each pod's share of rateLimit.globalPerS and rateLimit.globalBurst, as ConfigMap data lines
(nothing when rateLimit.globalPerS is 0).
*/}}
{{- define "space-pipeline.rateLimitShare" -}}
{{- with .Values.rateLimit -}}
{{- if .globalPerS -}}
{{- $pods := include "space-pipeline.maxPods" $ | int -}}
PIPELINE_RATE_LIMIT_PER_S: {{ include "space-pipeline.envValue" (divf .globalPerS $pods) | quote }}
PIPELINE_RATE_LIMIT_BURST: {{ max 1 (div (.globalBurst | int) $pods) | quote }}
{{- end -}}
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

{{/*
The kind of the pods' controller: Deployment, or StatefulSet with workload: statefulset.
*/}}
{{- define "space-pipeline.workloadKind" -}}
{{- if eq .Values.workload "statefulset" -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}

{{/*
The scrape job of this release's targets, which the alert rules and the dashboard select:
prometheusRule.job, else the one the chart's monitor gives (prometheus-operator names a
PodMonitor's job <monitor namespace>/<monitor name>, a ServiceMonitor's after the Service).
*/}}
{{- define "space-pipeline.scrapeJob" -}}
{{- $job := include "space-pipeline.knownScrapeJob" . -}}
{{- if not $job -}}
{{- fail "prometheusRule needs the scrape job of the pods: enable podMonitor or serviceMonitor, or set prometheusRule.job to the job your Prometheus scrapes them as" -}}
{{- end -}}
{{- $job -}}
{{- end -}}

{{/* The scrape job as above, or nothing when the chart cannot know it. */}}
{{- define "space-pipeline.knownScrapeJob" -}}
{{- if .Values.prometheusRule.job -}}
{{- .Values.prometheusRule.job -}}
{{- else if .Values.podMonitor.enabled -}}
{{- printf "%s/%s" (.Values.podMonitor.namespace | default .Release.Namespace) (include "space-pipeline.fullname" .) -}}
{{- else if .Values.serviceMonitor.enabled -}}
{{- printf "%s-metrics" (include "space-pipeline.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Where each alert's threshold is written in files/alerts.yaml (the only occurrence in its expr):
prometheusRule.rules.<alert>.threshold replaces its number.
*/}}
{{- define "space-pipeline.alertThresholds" -}}
SpacePipelineLagAboveSLO: ") > 300"
SpacePipelinePartitionStalled: ") > 600"
SpacePipelineApiErrorRatioHigh: "> 0.2"
SpacePipelineDeadLetterRate: ") > 15"
SpacePipelineRebalanceStorm: ") > 6"
{{- end -}}

{{/*
The pod template's labels: the chart's labels and podLabels, less what changes with the chart's
version alone (helm.sh/chart). A release that changes no pod, only alerts or the dashboard,
then restarts no consumer and costs the group no rebalance.
*/}}
{{- define "space-pipeline.podLabels" -}}
{{- $labels := include "space-pipeline.labelsWith" (dict "ctx" . "extra" .Values.podLabels) | fromYaml -}}
{{- toYaml (omit $labels "helm.sh/chart") -}}
{{- end -}}

{{/*
topologySpread.preset's constraints (maxSkew 1 over zones, nodes or both, selecting this
release's pods), then topologySpreadConstraints; empty when there are none. Kubernetes refuses
two constraints on one key, so an own constraint on a preset's key fails the render.
*/}}
{{- define "space-pipeline.topologySpreadConstraints" -}}
{{- $presets := dict "none" (list) "zone" (list "topology.kubernetes.io/zone") "node" (list "kubernetes.io/hostname") "zoneAndNode" (list "topology.kubernetes.io/zone" "kubernetes.io/hostname") -}}
{{- $spread := .Values.topologySpread | default dict -}}
{{- $keys := get $presets ($spread.preset | default "none") -}}
{{- $selector := dict "matchLabels" (include "space-pipeline.selectorLabels" . | fromYaml) -}}
{{- $constraints := list -}}
{{- range $key := $keys -}}
{{- $constraints = append $constraints (dict "maxSkew" 1 "topologyKey" $key "whenUnsatisfiable" ($spread.whenUnsatisfiable | default "ScheduleAnyway") "labelSelector" $selector) -}}
{{- end -}}
{{- range .Values.topologySpreadConstraints -}}
{{- if has .topologyKey $keys -}}
{{- fail (printf "topologySpreadConstraints has one on %s, which topologySpread.preset %s already spreads over: drop one of them" .topologyKey $spread.preset) -}}
{{- end -}}
{{- $constraints = append $constraints . -}}
{{- end -}}
{{- with $constraints -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/* What selects the `helm test` pod (the NetworkPolicy admits it by these). */}}
{{- define "space-pipeline.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
space-pipeline/helm-test: healthz
{{- end -}}

{{/*
The `helm test` pod's labels: the chart's, without app.kubernetes.io/name (so no selector of the
consumer pods, PDB, Services or monitors, takes it), component helm-test unless commonLabels
sets one, and its selector labels.
*/}}
{{- define "space-pipeline.testLabels" -}}
{{- $labels := omit (include "space-pipeline.labels" . | fromYaml) "app.kubernetes.io/name" -}}
{{- if not (hasKey (.Values.commonLabels | default dict) "app.kubernetes.io/component") -}}
{{- $_ := set $labels "app.kubernetes.io/component" "helm-test" -}}
{{- end -}}
{{- toYaml (merge (include "space-pipeline.testSelectorLabels" . | fromYaml) $labels) -}}
{{- end -}}

{{/* The Service `helm test` reaches the pods through; empty when there is none. */}}
{{- define "space-pipeline.testService" -}}
{{- if or .Values.metricsService.enabled .Values.serviceMonitor.enabled -}}
{{- include "space-pipeline.fullname" . }}-metrics
{{- else if eq .Values.workload "statefulset" -}}
{{- include "space-pipeline.fullname" . }}-pods
{{- end -}}
{{- end -}}
