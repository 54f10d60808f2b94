{{/*
How KEDA's kafka scaler authenticates, from the settings and Secrets the pods use, as YAML:
`metadata` (sasl and tls for the trigger), `secretTargetRef` and `configMapTargetRef` (the
TriggerAuthentication's parameters). Empty lists when the Kafka needs no credentials, and nothing
derived when keda.triggerAuthentication.name names an existing one. A Kafka KEDA could not
authenticate to fails the render, naming what is missing.
*/}}
{{- define "space-pipeline.kedaAuth" -}}
{{- $c := .Values.config -}}
{{- $protocol := get $c "kafkaSecurityProtocol" | default "PLAINTEXT" -}}
{{- $metadata := dict -}}
{{- $secretRefs := list -}}
{{- $configMapRefs := list -}}
{{- if not .Values.keda.triggerAuthentication.name -}}
{{- if hasPrefix "SASL_" $protocol -}}
{{- $mechanism := get $c "kafkaSaslMechanism" -}}
{{- $password := .Values.secrets.kafkaSaslPassword -}}
{{- $missing := list -}}
{{- if not $mechanism }}{{ $missing = append $missing "config.kafkaSaslMechanism" }}{{ end -}}
{{- if not (get $c "kafkaSaslUsername") }}{{ $missing = append $missing "config.kafkaSaslUsername" }}{{ end -}}
{{- if not $password.existingSecret }}{{ $missing = append $missing "secrets.kafkaSaslPassword.existingSecret" }}{{ end -}}
{{- if $missing -}}
{{- fail (printf "keda: config.kafkaSecurityProtocol=%s needs %s, or KEDA cannot read the lag (or name an existing TriggerAuthentication in keda.triggerAuthentication.name)" $protocol (join ", " $missing)) -}}
{{- end -}}
{{- $_ := set $metadata "sasl" (get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512") $mechanism) -}}
{{- /* The pods' own ConfigMap key: KEDA reads the username the pods use. */ -}}
{{- $configMapRefs = append $configMapRefs (dict "parameter" "username" "name" (include "space-pipeline.fullname" .) "key" "PIPELINE_KAFKA_SASL_USERNAME") -}}
{{- $secretRefs = append $secretRefs (dict "parameter" "password" "name" $password.existingSecret "key" $password.key) -}}
{{- end -}}
{{- if has $protocol (list "SSL" "SASL_SSL") -}}
{{- $_ := set $metadata "tls" "enable" -}}
{{- with .Values.kafkaTls -}}
{{- if .existingSecret -}}
{{- if ne (empty .certKey) (empty .keyKey) -}}
{{- fail "kafkaTls.certKey and kafkaTls.keyKey go together (a client certificate and its key): set both, or neither for server-only TLS" -}}
{{- end -}}
{{- /* KEDA takes the PEM contents, not paths: the same keys of the same Secret. */ -}}
{{- range $pair := list (list "ca" .caKey) (list "cert" .certKey) (list "key" .keyKey) -}}
{{- if index $pair 1 -}}
{{- $secretRefs = append $secretRefs (dict "parameter" (index $pair 0) "name" $.Values.kafkaTls.existingSecret "key" (index $pair 1)) -}}
{{- end -}}
{{- end -}}
{{- with $.Values.secrets.kafkaSslKeyfilePassword -}}
{{- if and .existingSecret $.Values.kafkaTls.keyKey -}}
{{- $secretRefs = append $secretRefs (dict "parameter" "keyPassword" "name" .existingSecret "key" .key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name := list "sasl" "tls" -}}
{{- if hasKey $.Values.keda.extraMetadata $name -}}
{{- fail (printf "keda.extraMetadata must not set %s: the chart derives it from config.kafkaSecurityProtocol (or name an existing TriggerAuthentication in keda.triggerAuthentication.name)" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "metadata" $metadata "secretTargetRef" $secretRefs "configMapTargetRef" $configMapRefs) -}}
{{- end -}}

{{/*
Whether a header or query parameter of this name holds a credential: "true" or "". The same rule
as the stage's redactor (pipeline/redaction.py secret_name), which tests/test_helm_keda.py holds
it to: compared without case, '-', '_', '.' or ' ', a name that is one of the short words or
contains one of the long ones.
*/}}
{{- define "space-pipeline.secretName" -}}
{{- $folded := . | lower | replace "-" "" | replace "_" "" | replace "." "" | replace " " "" -}}
{{- $secret := has $folded (list "key" "sig" "auth" "pass" "pwd" "jwt" "cookie" "session") -}}
{{- range list "token" "secret" "password" "passwd" "apikey" "signature" "credential" "authorization" "sessionid" "privatekey" "accesskey" -}}
{{- if contains . $folded }}{{ $secret = true }}{{ end -}}
{{- end -}}
{{- if $secret }}true{{ end -}}
{{- end -}}

{{/* What in a URL is a credential (user info, a secret query parameter), or "" for none. */}}
{{- define "space-pipeline.urlCredential" -}}
{{- $url := . | toString -}}
{{- if regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@" $url -}}
user info
{{- else -}}
{{- $query := regexReplaceAll "#.*$" (regexReplaceAll "^[^?]*\\??" $url "") "" -}}
{{- $found := "" -}}
{{- range $pair := regexSplit "[&;]" $query -1 -}}
{{- $parts := regexSplit "=" $pair 2 -}}
{{- if and (not $found) (eq (len $parts) 2) (index $parts 1) (include "space-pipeline.secretName" (index $parts 0)) -}}
{{- $found = printf "the query parameter %s" (index $parts 0) -}}
{{- end -}}
{{- end -}}
{{- $found -}}
{{- end -}}
{{- end -}}

{{/*
Credentials never sit in plain values: a URL or static headers holding them fail the render,
pointing at the Secret path (secrets.spaceApiUrl, secrets.spaceApiHeaders, or extraEnv with
valueFrom for the variables without one). A Secret and a plain value for one setting fail too.
*/}}
{{- define "space-pipeline.validateCredentials" -}}
{{- $c := .Values.config -}}
{{- $s := .Values.secrets -}}
{{- with get $c "spaceApiUrl" -}}
{{- with include "space-pipeline.urlCredential" . -}}
{{- fail (printf "config.spaceApiUrl holds a credential (%s): put the URL in a Secret and name it in secrets.spaceApiUrl" .) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "oauth2TokenUrl" "httpProxy" "schemaRegistryUrl" -}}
{{- with get $c $key -}}
{{- with include "space-pipeline.urlCredential" . -}}
{{- fail (printf "config.%s holds a credential (%s): set PIPELINE_%s from a Secret with extraEnv (valueFrom.secretKeyRef) instead" $key . (snakecase $key | upper)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := (get $c "spaceApiHeaders" | default dict) -}}
{{- if include "space-pipeline.secretName" $name -}}
{{- fail (printf "config.spaceApiHeaders.%s looks like a credential: put the headers, as a JSON object, in a Secret and name it in secrets.spaceApiHeaders" $name) -}}
{{- end -}}
{{- end -}}
{{- if and (get $c "spaceApiUrl") $s.spaceApiUrl.existingSecret -}}
{{- fail "config.spaceApiUrl and secrets.spaceApiUrl are both set: the Secret's URL would win; set one" -}}
{{- end -}}
{{- if and (get $c "spaceApiHeaders") $s.spaceApiHeaders.existingSecret -}}
{{- fail "config.spaceApiHeaders and secrets.spaceApiHeaders are both set: the Secret's headers would replace them all; put every header in the Secret's JSON object" -}}
{{- end -}}
{{- end -}}

{{/* The TCP port of host:port, or of a URL (its scheme's default without one). */}}
{{- define "space-pipeline.urlPort" -}}
{{- $url := . | toString -}}
{{- $authority := regexReplaceAll "^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*).*$" $url "${1}" -}}
{{- $port := regexFind ":[0-9]+$" $authority | trimPrefix ":" -}}
{{- if $port -}}{{ $port }}{{- else if hasPrefix "https:" (lower $url) -}}443{{- else -}}80{{- end -}}
{{- end -}}

{{/* Whether NetworkPolicy egress rules let TCP out to a port: "true" or "". Call with (dict "rules" $rules "port" $port "protocol" "TCP"). */}}
{{- define "space-pipeline.egressAllows" -}}
{{- $port := .port | int -}}
{{- $protocol := .protocol -}}
{{- $allowed := false -}}
{{- range $rule := .rules -}}
{{- if not $rule.ports -}}
{{- $allowed = true -}}
{{- end -}}
{{- range $entry := $rule.ports -}}
{{- if eq ($entry.protocol | default "TCP") $protocol -}}
{{- if or (kindIs "invalid" $entry.port) (kindIs "string" $entry.port) -}}
{{- /* No port: every port. A named port is resolved per destination pod: it may match. */ -}}
{{- $allowed = true -}}
{{- else if and (le ($entry.port | int) $port) (le $port ($entry.endPort | default $entry.port | int)) -}}
{{- $allowed = true -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $allowed }}true{{ end -}}
{{- end -}}

{{/*
networkPolicy.egress.allowAll false: some rule must let the pods out to every bootstrap server's
port, to the Space API's (or the HTTP proxy's), the OAuth2 token URL's and the schema registry's
port (the registry is asked directly, never through the proxy), and to DNS (UDP 53)
when allowDns is off and one of them is a host name. Only ports and protocols are checked: a render cannot tell which addresses a
host name resolves to, so the rules' `to` peers are taken on trust.
*/}}
{{- define "space-pipeline.validateEgress" -}}
{{- with .Values.networkPolicy -}}
{{- if and .enabled (not .egress.allowAll) -}}
{{- $c := $.Values.config -}}
{{- $needs := list -}}
{{- range $server := splitList "," ($c.kafkaBootstrapServers | toString) -}}
{{- $server = trim $server -}}
{{- if $server -}}
{{- $port := regexFind ":[0-9]+$" $server | trimPrefix ":" | default "9092" -}}
{{- $needs = append $needs (list $port (printf "Kafka, %s" $server) (regexReplaceAll ":[0-9]+$" $server "")) -}}
{{- end -}}
{{- end -}}
{{- if not (get $c "sinkFunction") -}}
{{- $proxy := and (eq (get $c "httpClient" | default "lean") "aiohttp") (get $c "httpProxy") -}}
{{- if $proxy -}}
{{- $authority := regexReplaceAll "^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*).*$" $proxy "${1}" -}}
{{- $needs = append $needs (list (include "space-pipeline.urlPort" $proxy) (printf "the HTTP proxy, %s" $authority) (regexReplaceAll ":[0-9]+$" $authority "")) -}}
{{- else -}}
{{- range $pair := list (list "spaceApiUrl" "the Space API") (list "oauth2TokenUrl" "the OAuth2 token endpoint") -}}
{{- with get $c (index $pair 0) -}}
{{- $port := include "space-pipeline.urlPort" . -}}
{{- $host := regexReplaceAll "^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#:]*).*$" . "${1}" -}}
{{- $needs = append $needs (list $port (printf "%s, %s:%s" (index $pair 1) $host $port) $host) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with get $c "schemaRegistryUrl" -}}
{{- $port := include "space-pipeline.urlPort" . -}}
{{- $host := regexReplaceAll "^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#:]*).*$" . "${1}" -}}
{{- $needs = append $needs (list $port (printf "the schema registry, %s:%s" $host $port) $host) -}}
{{- end -}}
{{- $rules := .egress.rules | default list -}}
{{- range $need := $needs -}}
{{- if not (include "space-pipeline.egressAllows" (dict "rules" $rules "port" (index $need 0) "protocol" "TCP")) -}}
{{- fail (printf "networkPolicy.egress.allowAll is false, but no rule in networkPolicy.egress.rules allows TCP port %s (%s)" (index $need 0) (index $need 1)) -}}
{{- end -}}
{{- end -}}
{{- $named := false -}}
{{- range $need := $needs -}}
{{- if not (regexMatch "^([0-9]{1,3}[.]){3}[0-9]{1,3}$|^\\[" (index $need 2)) }}{{ $named = true }}{{ end -}}
{{- end -}}
{{- if and $named (not .egress.allowDns) (not (include "space-pipeline.egressAllows" (dict "rules" $rules "port" 53 "protocol" "UDP"))) -}}
{{- fail "networkPolicy.egress.allowAll is false, but no rule allows UDP port 53 (DNS): set networkPolicy.egress.allowDns, or add a rule for your resolver" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The Space API's URL as NOTES.txt may print it: never a credential. A URL from a Secret is named
by its Secret; a plain one cannot hold credentials (validateCredentials), and its user info and
secret query values are masked all the same.
*/}}
{{- define "space-pipeline.notesUrl" -}}
{{- with .Values.secrets.spaceApiUrl -}}
{{- if .existingSecret -}}
the URL in Secret {{ .existingSecret }} (key {{ .key }})
{{- else -}}
{{- $url := get $.Values.config "spaceApiUrl" | toString -}}
{{- $bare := regexReplaceAll "^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#]*@" $url "${1}" -}}
{{- if ne $bare $url -}}
{{- $url = regexReplaceAll "^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#]*@" $url "${1}********@" -}}
{{- end -}}
{{- if include "space-pipeline.urlCredential" $bare -}}
{{- $url = regexReplaceAll "\\?.*$" $url "?********" -}}
{{- end -}}
{{- $url -}}
{{- end -}}
{{- end -}}
{{- end -}}
