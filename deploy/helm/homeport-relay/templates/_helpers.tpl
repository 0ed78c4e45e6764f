{{/* Names and labels. */}}
{{- define "homeport-relay.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "homeport-relay.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "homeport-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "homeport-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "homeport-relay.labels" -}}
{{ include "homeport-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The Secret that holds the tokens and visitor keys. */}}
{{- define "homeport-relay.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.secrets.create -}}
{{- include "homeport-relay.fullname" . -}}
{{- else -}}
{{- fail "secrets: set secrets.existingSecret to the name of a Secret with a key token-<name> for each token (kubectl create secret generic homeport-relay-secrets --from-literal=token-alice=\"$(openssl rand -base64 32)\"), or secrets.create=true with each secret given at install time (--set-string secrets.tokens.alice=...)" -}}
{{- end -}}
{{- end -}}

{{/*
The public ports of relay.allowPorts ("3390,8000-8010"), as a JSON list
of numbers; every part checked.
*/}}
{{- define "homeport-relay.tunnelPorts" -}}
{{- $out := list -}}
{{- range $part := splitList "," (toString .Values.relay.allowPorts) -}}
{{- $p := trim $part -}}
{{- if $p -}}
{{- $r := splitList "-" $p -}}
{{- if gt (len $r) 2 -}}{{- fail (printf "relay.allowPorts: %q is not a port or a range LOW-HIGH" $p) -}}{{- end -}}
{{- $lo := trim (first $r) -}}
{{- $hi := trim (last $r) -}}
{{- if not (and (regexMatch "^[0-9]+$" $lo) (regexMatch "^[0-9]+$" $hi)) -}}{{- fail (printf "relay.allowPorts: %q is not a port or a range LOW-HIGH" $p) -}}{{- end -}}
{{- $lo = atoi $lo -}}
{{- $hi = atoi $hi -}}
{{- if or (lt $lo 1) (gt $hi 65535) (gt $lo $hi) -}}{{- fail (printf "relay.allowPorts: %q: want ports from 1 to 65535, low before high" $p) -}}{{- end -}}
{{- if gt (sub $hi $lo) 65535 -}}{{- fail "relay.allowPorts: range too large" -}}{{- end -}}
{{- $out = append $out (list $lo $hi) -}}
{{- end -}}
{{- end -}}
{{- if not $out -}}{{- fail "relay.allowPorts: give the public ports agents may use, such as \"3390,8000-8010\"" -}}{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The lowest port the relay binds: agent port or a public port. */}}
{{- define "homeport-relay.lowestPort" -}}
{{- $low := int .Values.relay.agentPort -}}
{{- range $r := include "homeport-relay.tunnelPorts" . | fromJsonArray -}}
{{- $low = min $low (int (first $r)) -}}
{{- end -}}
{{- $low -}}
{{- end -}}
