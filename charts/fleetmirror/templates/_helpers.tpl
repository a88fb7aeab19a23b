{{/*
Shared names and labels. Object names are fixed on purpose: the agent finds the aggregator
Service, and the aggregator recognises the agent ServiceAccount and its Lease, by these names.
*/}}

{{- define "fleetmirror.name" -}}
fleetmirror
{{- end }}

{{- define "fleetmirror.aggregator.name" -}}
fleetmirror-aggregator
{{- end }}

{{- define "fleetmirror.agent.name" -}}
fleetmirror-agent
{{- end }}

{{/* Chart name and version, as in the helm.sh/chart label. */}}
{{- define "fleetmirror.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "agent").
Selectors are immutable on Deployments and DaemonSets: never add a label here that changes
between releases (version, chart).
*/}}
{{- define "fleetmirror.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetmirror.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. Call with (dict "ctx" $ "component" "agent"). */}}
{{- define "fleetmirror.labels" -}}
{{ include "fleetmirror.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: fleetmirror
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "fleetmirror.chart" .ctx }}
{{- end }}

{{/* The image reference; the tag defaults to the chart's appVersion. */}}
{{- define "fleetmirror.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* The username the agent's ServiceAccount token authenticates as (TokenReview). */}}
{{- define "fleetmirror.agent.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "fleetmirror.agent.name" .) }}
{{- end }}

{{/* The aggregator's in-cluster gRPC address, unless agent.aggregatorAddr overrides it. */}}
{{- define "fleetmirror.agent.aggregatorAddr" -}}
{{- if .Values.agent.aggregatorAddr }}
{{- .Values.agent.aggregatorAddr }}
{{- else }}
{{- printf "%s://%s.%s.svc:9090" (ternary "https" "http" .Values.grpc.tls.enabled) (include "fleetmirror.aggregator.name" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* Mount layouts the agent understands; anything else fails the render. */}}
{{- define "fleetmirror.agent.mountLayouts" -}}
{{- $known := list "loft" "loft-flat" "vcluster-hostpath" }}
{{- if not .Values.agent.mountLayouts }}
{{- fail "agent.mountLayouts must name at least one layout (loft, loft-flat, vcluster-hostpath)" }}
{{- end }}
{{- range .Values.agent.mountLayouts }}
{{- if not (has . $known) }}
{{- fail (printf "agent.mountLayouts: unknown layout %q (known: loft, loft-flat, vcluster-hostpath)" .) }}
{{- end }}
{{- end }}
{{- join "," (uniq .Values.agent.mountLayouts) }}
{{- end }}

{{/* The PodDisruptionBudget API this cluster serves (policy/v1 since Kubernetes 1.21). */}}
{{- define "fleetmirror.pdb.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end }}
{{- end }}

{{/* The aggregator's controllers (FLEETMIRROR_CONTROLLERS); anything else fails the render. */}}
{{- define "fleetmirror.aggregator.controllers" -}}
{{- $known := list "health" "mirror" "routing" "integrations" }}
{{- if not .Values.aggregator.controllers }}
{{- fail "aggregator.controllers must name at least one controller (health, mirror, routing, integrations)" }}
{{- end }}
{{- range .Values.aggregator.controllers }}
{{- if not (has . $known) }}
{{- fail (printf "aggregator.controllers: unknown controller %q (known: health, mirror, routing, integrations)" .) }}
{{- end }}
{{- end }}
{{- join "," (uniq .Values.aggregator.controllers) }}
{{- end }}

{{/* grpc.diagnosticsAuth, checked. */}}
{{- define "fleetmirror.diagnosticsAuth" -}}
{{- if not (has .Values.grpc.diagnosticsAuth (list "none" "token")) }}
{{- fail (printf "grpc.diagnosticsAuth must be none or token, not %q" .Values.grpc.diagnosticsAuth) }}
{{- end }}
{{- .Values.grpc.diagnosticsAuth }}
{{- end }}
