{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "ladder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS
naming spec); suffixed names below keep to 63 by truncating this at 48.
If release name contains chart name it will be used as a full name.
*/}}
{{- define "ladder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "ladder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Allow overriding the namespace of the release's namespaced objects.
*/}}
{{- define "ladder.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/*
Common labels. `app.kubernetes.io/name: ladder` is what the alert rules and docs select on.
*/}}
{{- define "ladder.labels" -}}
helm.sh/chart: {{ include "ladder.chart" . }}
{{ include "ladder.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ladder
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "ladder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ladder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component: (dict "ctx" $ "component" "controller").
*/}}
{{- define "ladder.componentLabels" -}}
{{ include "ladder.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ladder.componentSelectorLabels" -}}
{{ include "ladder.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Names of the objects.
*/}}
{{- define "ladder.controller.fullname" -}}
{{- printf "%s-controller" (include "ladder.fullname" .) }}
{{- end }}

{{- define "ladder.metrics.fullname" -}}
{{- printf "%s-metrics" (include "ladder.fullname" .) }}
{{- end }}

{{- define "ladder.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "ladder.fullname" .) }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "ladder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ladder.controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion.
(dict "image" .Values.controller.image "ctx" $)
*/}}
{{- define "ladder.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The store: the Secret (and key) holding the SQLAlchemy URL that the controller reads as
LADDER_DB_URL and that trial pods get through `--db-secret`. The URL is never a plain value.
*/}}
{{- define "ladder.database.secretName" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "%s-db" (include "ladder.fullname" .) }}
{{- else }}
{{- .Values.database.existingSecret }}
{{- end }}
{{- end }}

{{- define "ladder.database.secretKey" -}}
{{- if .Values.postgresql.enabled }}
{{- "url" }}
{{- else }}
{{- .Values.database.secretKey }}
{{- end }}
{{- end }}

{{/*
The bundled PostgreSQL's host, as a fully qualified name: trial pods in other namespaces
reach it too.
*/}}
{{- define "ladder.postgresql.host" -}}
{{- printf "%s.%s.svc.%s" (include "ladder.postgresql.fullname" .) (include "ladder.namespace" .) .Values.clusterDomain }}
{{- end }}

{{/*
Namespaces the controller watches: empty means all of them (cluster-wide RBAC).
*/}}
{{- define "ladder.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{- end }}
{{- end }}

{{/*
The Kopf peering object's name (only with controller.peering.enabled).
*/}}
{{- define "ladder.peeringName" -}}
{{- default (include "ladder.fullname" .) .Values.controller.peering.name }}
{{- end }}

{{/*
Sweep execution defaults, as the JSON the controller reads from LADDER_DEFAULT_EXECUTION:
`execution` with the worker image filled in and empty values dropped. A Sweep's own
`spec.execution` keys win over these.
*/}}
{{- define "ladder.defaultExecution" -}}
{{- $exec := dict }}
{{- range $key, $value := .Values.execution }}
{{- if or (kindIs "bool" $value) (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) $value }}
{{- $_ := set $exec $key $value }}
{{- end }}
{{- end }}
{{- $_ := set $exec "image" (include "ladder.image" (dict "image" .Values.worker.image "ctx" .)) }}
{{- with .Values.worker.image.pullPolicy }}
{{- $_ := set $exec "imagePullPolicy" . }}
{{- end }}
{{- toJson $exec }}
{{- end }}

{{/*
Checks across values that the JSON schema cannot word clearly. Rendered once, by the
Deployment; each failure says what to change.
*/}}
{{- define "ladder.validate" -}}
{{- if and .Values.postgresql.enabled .Values.database.existingSecret }}
{{- fail (printf "\n\nladder: database.existingSecret (%q) is set while postgresql.enabled is true.\nChoose one store: the bundled PostgreSQL (leave database.existingSecret empty) or your own\n(--set postgresql.enabled=false,database.existingSecret=NAME)." .Values.database.existingSecret) }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) (not .Values.database.existingSecret) }}
{{- fail "\n\nladder: no store. postgresql.enabled is false, so database.existingSecret must name a Secret\nin the release namespace whose key database.secretKey (default \"url\") holds the SQLAlchemy URL,\ne.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/ladder. Create it with\n  kubectl -n NAMESPACE create secret generic ladder-db --from-literal=url=postgresql+psycopg://...\nthen --set database.existingSecret=ladder-db." }}
{{- end }}
{{- if and (gt (int .Values.controller.replicas) 1) (not .Values.controller.peering.enabled) }}
{{- fail (printf "\n\nladder: controller.replicas is %d but controller.peering.enabled is false.\nSeveral controllers without Kopf peering would act on the same Sweeps at once; set\ncontroller.replicas=1, or enable peering (controller.peering.enabled=true, which needs Kopf's\npeering CRDs installed)." (int .Values.controller.replicas)) }}
{{- end }}
{{- if not .Values.allowPrivilegedTrials }}
{{- if .Values.execution.ipcLock }}
{{- fail "\n\nladder: execution.ipcLock adds the IPC_LOCK capability to trial containers. Set\nallowPrivilegedTrials=true if you mean it (RDMA needs it)." }}
{{- end }}
{{- range .Values.execution.volumes }}
{{- if hasKey . "hostPath" }}
{{- fail (printf "\n\nladder: execution.volumes[%s] is a hostPath volume, which gives trial pods the node's\nfilesystem. Use a PersistentVolumeClaim, or set allowPrivilegedTrials=true if you mean it." (.name | default "?" | quote)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
