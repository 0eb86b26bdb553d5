{{/* Names and labels of the strait-zone chart. */}}

{{- define "strait-zone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strait-zone.fullname" -}}
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

{{/* Object names (a suffix on the release's full name, kept within 63 characters). */}}
{{- define "strait-zone.cpName" -}}
{{- include "strait-zone.fullname" . | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "strait-zone.gatewayName" -}}
{{- printf "%s-gateway" (include "strait-zone.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "strait-zone.webhookName" -}}
{{- printf "%s-webhook" (include "strait-zone.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "strait-zone.dnsName" -}}
{{- printf "%s-dns" (include "strait-zone.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "strait-zone.joinTokenSecretName" -}}
{{- default (printf "%s-join-token" (include "strait-zone.fullname" .)) .Values.joinToken.existingSecret -}}
{{- end -}}
{{- define "strait-zone.gatewayTokenSecretName" -}}
{{- default (printf "%s-gateway-token" (include "strait-zone.fullname" .)) .Values.gateway.token.existingSecret -}}
{{- end -}}
{{- define "strait-zone.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "strait-zone.fullname" .)) .Values.webhook.tls.existingSecret -}}
{{- end -}}
{{- define "strait-zone.cpServiceAccountName" -}}
{{- default (include "strait-zone.cpName" .) .Values.serviceAccount.controlPlaneName -}}
{{- end -}}
{{- define "strait-zone.gatewayServiceAccountName" -}}
{{- default (include "strait-zone.gatewayName" .) .Values.serviceAccount.gatewayName -}}
{{- end -}}

{{/* Where sidecars and gateways reach the zone control plane: its gRPC Service. */}}
{{- define "strait-zone.cpAddress" -}}
{{- printf "%s.%s.svc.%s:%v" (include "strait-zone.cpName" .) .Release.Namespace .Values.clusterDomain .Values.controlPlane.ports.grpc -}}
{{- end -}}

{{/* Labels every object carries (commonLabels from the values, and the chart's own). */}}
{{- define "strait-zone.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: strait
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels for objects of one component: (dict "ctx" $ "component" "control-plane"). */}}
{{- define "strait-zone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strait-zone.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "strait-zone.labels" -}}
{{ include "strait-zone.commonLabels" .ctx }}
{{ include "strait-zone.selectorLabels" . }}
{{- end -}}

{{- define "strait-zone.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
checkov skips that only apply while the image is pulled by tag. With image.digest set both checks
pass and no skip is rendered.
*/}}
{{- define "strait-zone.imageCheckovSkips" -}}
{{- if not .Values.image.digest -}}
checkov.io/skip1: CKV_K8S_43=Pinned by the release tag (the chart appVersion); set image.digest to pin by digest, a chart cannot know the digest of an image built after it.
checkov.io/skip2: CKV_K8S_15=IfNotPresent on an immutable release tag; Always would make every restart depend on the registry, which a control plane must survive without (set image.digest or pullPolicy Always to pass).
{{- end -}}
{{- end -}}

{{/* The hardened container securityContext every container of the chart runs with. */}}
{{- define "strait-zone.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Preferred anti-affinity spreading one component's replicas over hosts. */}}
{{- define "strait-zone.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "strait-zone.selectorLabels" . | nindent 12 }}
{{- end -}}
