{{- define "kopfvirt.labels" -}}
app.kubernetes.io/name: kopfvirt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kopfvirt
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The labels of a component's pods: its selector's two, then the recommended rest.
     Call with (dict "root" $ "component" "agent"). */}}
{{- define "kopfvirt.podLabels" -}}
app.kubernetes.io/name: kopfvirt
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kopfvirt
{{- end -}}

{{/* Where a component's pods may run and with what priority: the component's values
     (nodeSelector falls back to the chart-wide one), and the chart's imagePullSecrets.
     Call with (dict "root" $ "values" .Values.agent "nodeSelector" true). */}}
{{- define "kopfvirt.podPlacement" -}}
{{- $nodeSelector := .values.nodeSelector | default (ternary .root.Values.nodeSelector dict (default false .nodeSelector)) -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "kopfvirt.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Non-empty when the controller issues the webhook's certificate itself (neither
     cert-manager nor a caBundle of the user's). */}}
{{- define "kopfvirt.webhookCertsManaged" -}}
{{- if not (or .Values.webhook.certManagerIssuer .Values.webhook.caBundle) }}true{{ end -}}
{{- end -}}

{{- /* The VM subresources (console, vnc, xml) need the certificates the controller keeps:
       the agents trust the operator's CA. */}}
{{- define "kopfvirt.subresourcesServed" -}}
{{- if and .Values.subresources.enabled .Values.webhook.enabled (include "kopfvirt.webhookCertsManaged" .) }}true{{ end -}}
{{- end -}}
