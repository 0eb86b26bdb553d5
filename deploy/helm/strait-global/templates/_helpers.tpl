{{/* Names and labels of the strait-global chart. */}}

{{- define "strait-global.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strait-global.fullname" -}}
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

{{/* The headless Service that gives every node a stable DNS name (Raft peers). */}}
{{- define "strait-global.peersName" -}}
{{- printf "%s-peers" (include "strait-global.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strait-global.peersDomain" -}}
{{- printf "%s.%s.svc.%s" (include "strait-global.peersName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "strait-global.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strait-global.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "strait-global.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strait-global.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: global
{{- end -}}

{{- define "strait-global.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "strait-global.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: strait
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "strait-global.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A Raft majority of the configured voters. */}}
{{- define "strait-global.quorum" -}}
{{- add (div (int .Values.replicas) 2) 1 -}}
{{- end -}}

{{/*
checkov skips that only apply while the image is pulled by tag. With image.digest set both checks
pass and no skip is rendered.
*/}}
{{- define "strait-global.imageCheckovSkips" -}}
{{- if not .Values.image.digest -}}
checkov.io/skip1: CKV_K8S_43=Pinned by the release tag (the chart appVersion); set image.digest to pin by digest, a chart cannot know the digest of an image built after it.
checkov.io/skip2: CKV_K8S_15=IfNotPresent on an immutable release tag; Always would make every restart depend on the registry, which a control plane must survive without (set image.digest or pullPolicy Always to pass).
{{- end -}}
{{- end -}}
