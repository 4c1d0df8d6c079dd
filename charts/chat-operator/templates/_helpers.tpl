{{/* Chart name, overridable. */}}
{{- define "chat-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already contains the chart name, else "<release>-<chart>". */}}
{{- define "chat-operator.fullname" -}}
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

{{- define "chat-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them between chart versions. */}}
{{- define "chat-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "chat-operator.labels" -}}
helm.sh/chart: {{ include "chat-operator.chart" . }}
{{ include "chat-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chatcluster
app.kubernetes.io/component: operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "chat-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chat-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: digest wins over tag; the tag defaults to the chart's appVersion. */}}
{{- define "chat-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The default chat-node image (CHAT_OPERATOR_DEFAULT_NODE_IMAGE): digest wins over tag; the
tag defaults to the chart's appVersion, the chat-node release made with this operator. */}}
{{- define "chat-operator.defaultNodeImage" -}}
{{- $image := .Values.chatNode.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* An operand's default image from its `image` values (`repository`, `tag`, `digest`): the
digest wins over the tag. */}}
{{- define "chat-operator.operandImage" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{/* Checks across values that a JSON schema cannot express. */}}
{{- define "chat-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs operator.leaderElection.enabled=true: two operators without a Lease would fight over every ChatCluster" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true: the ServiceMonitor scrapes the metrics Service" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicaCount)) }}
{{- fail "podDisruptionBudget.minAvailable must be less than replicaCount, or no node could ever be drained" }}
{{- end }}
{{- end }}

{{/* The watched namespaces, comma-separated (empty: all): operator.watchNamespaces plus
     operator.watchNamespace, without duplicates. */}}
{{- define "chat-operator.watchNamespaces" -}}
{{- $all := concat (.Values.operator.watchNamespaces | default list) (compact (list .Values.operator.watchNamespace)) }}
{{- join "," (uniq $all) }}
{{- end }}

{{/*
`monitoring.labels` as the operator's CHAT_OPERATOR_MONITORING_LABELS: `key=value` pairs joined by
commas, sorted by key.
*/}}
{{- define "chat-operator.monitoringLabels" -}}
{{- $pairs := list -}}
{{- range $key, $value := .Values.monitoring.labels -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end }}
