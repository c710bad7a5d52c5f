{{/* Names, labels and shared bits. */}}

{{- define "coinpulse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coinpulse.fullname" -}}
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

{{- define "coinpulse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coinpulse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coinpulse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "coinpulse.labels" -}}
helm.sh/chart: {{ include "coinpulse.chart" . }}
{{ include "coinpulse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "coinpulse.collectorSelectorLabels" -}}
{{ include "coinpulse.selectorLabels" . }}
app.kubernetes.io/component: collector
{{- end }}

{{- define "coinpulse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coinpulse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "coinpulse.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Secret holding the collector's database URL and API key: yours, or the chart's. */}}
{{- define "coinpulse.secretName" -}}
{{- default (include "coinpulse.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "coinpulse.databaseUrlKey" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecretKeys.databaseUrl }}{{ else }}database-url{{ end }}
{{- end }}

{{- define "coinpulse.coincapKey" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecretKeys.coincapApiKey }}{{ else }}coincap-api-key{{ end }}
{{- end }}

{{/* The migration Job runs before the release's own Secret exists, so it reads a hook Secret of its own. */}}
{{- define "coinpulse.migrationSecretName" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecret }}{{ else }}{{ include "coinpulse.fullname" . }}-migration{{ end }}
{{- end }}

{{- define "coinpulse.migrationUrlKey" -}}
{{- if .Values.existingSecret }}
{{- default .Values.existingSecretKeys.databaseUrl .Values.existingSecretKeys.migrationDatabaseUrl }}
{{- else }}migration-database-url{{ end }}
{{- end }}

{{/* Refuse what cannot work, with one line saying what to set. */}}
{{- define "coinpulse.validate" -}}
{{- if and (not .Values.existingSecret) (not .Values.database.url) }}
{{- fail "coinpulse: set database.url (a postgresql:// URL of the collector's login role) or existingSecret" }}
{{- end }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- $feed := default "auto" (get .Values.config "COINPULSE_FEED") }}
{{- if or (eq $feed "demo") (and (eq $feed "auto") (not .Values.existingSecret) (not .Values.coincap.apiKey)) }}
{{- fail "coinpulse: the demo feed runs in a single replica: set replicaCount=1, or a CoinCap key (coincap.apiKey or existingSecret) for a live feed" }}
{{- end }}
{{- end }}
{{- range $key := list "COINPULSE_REPLICAS" "COINPULSE_REPLICA_INDEX" "COINPULSE_METRICS_PORT" "COINPULSE_METRICS_HOST" "COINPULSE_SPOOL_DIR" "COINPULSE_DATABASE_URL" "COINCAP_API_KEY" }}
{{- if hasKey $.Values.config $key }}
{{- fail (printf "coinpulse: %s is set by the chart (or a secret), not in config" $key) }}
{{- end }}
{{- end }}
{{- end }}
