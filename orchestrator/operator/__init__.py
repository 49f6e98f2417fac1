"""The Kubernetes controller: Sweeps in, KubeRay RayJobs out (docs/architecture.md).

- `manifests`: pure builders and readers of RayJob objects (names, labels, the RayJob spec,
  the outcome a finished RayJob reports). No I/O; unit-tested on their own.
- `conditions`: the Sweep's status conditions (pure).
- `kube`: the kubernetes-client adapter (RayJobs, pods, Sweep status, Events).
- `reconcile`: one level-triggered pass over one Sweep: observe, `plan`, act.
- `handlers`: the Kopf handlers; every one of them routes to `reconcile`.
- `controller`: `ladder controller` (runs Kopf) and `ladder submit` (server-side apply).

RBAC: k8s/rbac/controller.yaml (tests/k8s/test_operator.py runs the controller under it).
"""
