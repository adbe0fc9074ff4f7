{{- define "chronik.name" -}}
{{- printf "chronik-%s" .Values.region | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "chronik.headless" -}}
{{- printf "%s-brokers" (include "chronik.name" .) -}}
{{- end -}}

{{- define "chronik.labels" -}}
app.kubernetes.io/name: chronik
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
chronik.io/region: {{ .Values.region }}
{{- end -}}

{{- define "chronik.brokerSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "chronik.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
