{{/* The app's name: the chart's, unless nameOverride says otherwise. */}}
{{- define "time-app.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The StatefulSet's and the client Service's name. A StatefulSet's pods get a label with the set's
name and a hash (controller-revision-hash), so the name stays within 52 characters.
*/}}
{{- define "time-app.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service that gives each pod its DNS name (the StatefulSet's serviceName). */}}
{{- define "time-app.podsService" -}}
{{- printf "%s-pods" (include "time-app.fullname" .) }}
{{- end }}

{{/* The release the pods run: image.tag, else the chart's appVersion. */}}
{{- define "time-app.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Labels that select the pods; they never change after install. */}}
{{- define "time-app.selectorLabels" -}}
app.kubernetes.io/name: {{ include "time-app.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "time-app.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "time-app.selectorLabels" . }}
app.kubernetes.io/version: {{ include "time-app.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
