{{/* Names and labels shared by every template. */}}

{{- define "packsmith.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "packsmith.fullname" -}}
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

{{- define "packsmith.selectorLabels" -}}
app.kubernetes.io/name: {{ include "packsmith.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "packsmith.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "packsmith.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "packsmith.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "packsmith.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" or "false": leaderElection.enabled, where "auto" means replicaCount > 1. */}}
{{- define "packsmith.leaderElect" -}}
{{- $enabled := .Values.leaderElection.enabled }}
{{- if eq (toString $enabled) "auto" }}
{{- if gt (int .Values.replicaCount) 1 }}true{{ else }}false{{ end }}
{{- else if eq (toString $enabled) "true" }}true
{{- else if eq (toString $enabled) "false" }}false
{{- else }}
{{- fail (printf "leaderElection.enabled must be auto, true or false (got %v)" $enabled) }}
{{- end }}
{{- end }}

{{- define "packsmith.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the controller needs on the resources it reconciles, reads and publishes — the same
list whether granted cluster-wide (ClusterRole) or in one watched namespace (Role). Each verb
is one the controller's code issues (README §Controller); nothing else.
*/}}
{{- define "packsmith.watchRules" -}}
# Its own resources: watched, finalizer added/removed by patch, status written by patch.
- apiGroups: [packsmith.dev]
  resources: [packagesources, packagerepositorysources]
  verbs: [get, list, watch, patch]
- apiGroups: [packsmith.dev]
  resources: [packagesources/status, packagerepositorysources/status]
  verbs: [patch]
# Receivers: watched for their paths, status (the path) written by patch. A webhook annotates
# the sources they name with the patch above.
- apiGroups: [packsmith.dev]
  resources: [receivers]
  verbs: [get, list, watch]
- apiGroups: [packsmith.dev]
  resources: [receivers/status]
  verbs: [patch]
# Credentials and inline contents a source names. Watched as metadata only (to re-run the
# sources that reference them); the data is read with a get of the one named object. Secrets
# are never written.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
# ConfigMaps as above, plus the release records of sources that a PackageRepositorySource
# publishes (the rendered Package in a ConfigMap named like it): applied, listed for
# publish.retain, watched (metadata only) so a deleted or edited one is restored, deleted with
# the source.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
# What it publishes: created, then server-side applied (ownership checked before each write),
# watched so a deleted or edited one is restored; old versions beyond publish.retain and everything a
# deleted source published are deleted.
- apiGroups: [data.packaging.carvel.dev]
  resources: [packages, packagemetadatas]
  verbs: [get, list, watch, create, patch, delete]
# The PackageRepository of a PackageRepositorySource: created, then server-side applied
# (ownership checked first), watched (metadata only) so a deleted or edited one is restored,
# deleted with its source (finalizer).
- apiGroups: [packaging.carvel.dev]
  resources: [packagerepositories]
  verbs: [get, list, watch, create, patch, delete]
# Normal Published / Warning <reason> events on the reconciled objects.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
