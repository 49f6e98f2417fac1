{{/*
The controller's permissions in the namespaces it serves, and nothing more (see the comments).
Rendered into a ClusterRole (watchNamespaces empty) or into one Role per watched namespace.
k8s/rbac/controller.yaml holds the same rules for running the controller by hand.
*/}}
{{- define "ladder.rbac.namespacedRules" -}}
# Sweeps: read and watch them; Kopf patches its finalizer and bookkeeping annotations.
- apiGroups: [ladder.dev]
  resources: [sweeps]
  verbs: [get, list, watch, patch, update]
# The Sweep's status (phase, counts, conditions).
- apiGroups: [ladder.dev]
  resources: [sweeps/status]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion on RayJobs (OwnerReferencesPermissionEnforcement).
- apiGroups: [ladder.dev]
  resources: [sweeps/finalizers]
  verbs: [update]
# One RayJob per trial attempt; KubeRay makes its RayCluster and pods.
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [get, list, watch, create, delete, patch]
# The RayClusters of those jobs, or a standing one (execution.clusterSelector): read only.
- apiGroups: [ray.io]
  resources: [rayclusters]
  verbs: [get, list, watch]
# Trial pods, read only: an OOMKilled container makes the trial an `oom/host`; pods of
# finished trials' clusters still hold GPUs; unschedulable pods get their trial requeued.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events on Sweeps (trial launches, outcomes, lane ceilings), the controller's and Kopf's;
# list: KubeRay's Events on a trial's RayCluster (DeletedWorkerPod ... OOMKilled).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list]
{{- if and .Values.controller.peering.enabled (not (include "ladder.clusterWide" .)) }}
# Kopf peering in this namespace: watch the peering object, keep itself alive in it.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  resourceNames: [{{ include "ladder.peeringName" . }}]
  verbs: [get, patch]
{{- end }}
{{- end }}

{{/*
Cluster-scoped permissions: Kopf's CRD and namespace observation, and cluster-wide peering.
*/}}
{{- define "ladder.rbac.clusterRules" -}}
{{- if .Values.rbac.readNodes }}
# Capacity of a shared cluster (Sweeps without execution.capacity): the nodes' allocatable
# nvidia.com/gpu, less what pods of every namespace already request. Read only.
- apiGroups: [""]
  resources: [nodes]
  verbs: [list]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- end }}
{{- if .Values.rbac.watchCustomResourceDefinitions }}
# Kopf: notice CRDs (KubeRay's) installed or changed while it runs.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
{{- if and .Values.rbac.listNamespaces (not (include "ladder.clusterWide" .)) }}
# Kopf, serving only watchNamespaces: it lists and watches namespaces (names only) to serve
# them. Without this the controller serves the names as given, and notices a watched
# namespace (or a CRD) created later only at its next start.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- if and .Values.controller.peering.enabled (include "ladder.clusterWide" .) }}
# Kopf peering, cluster-wide: watch the peering object, keep itself alive in it.
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  resourceNames: [{{ include "ladder.peeringName" . }}]
  verbs: [get, patch]
{{- end }}
{{- end }}
