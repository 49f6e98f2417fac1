"""The Kubernetes controller: Sweeps in, KubeRay RayJobs out (DESIGN.md, "Cluster").

- `manifests`: pure builders and readers of RayJob objects (names, labels, the RayJob spec,
  the outcome a finished RayJob reports). No I/O; unit-tested on their own.
- `conditions`: the Sweep's status conditions (pure).
- `kube`: the kubernetes-client adapter (RayJobs, pods, Sweep status, Events).
- `reconcile`: one level-triggered pass over one Sweep: observe, `plan`, act.
- `handlers`: the Kopf handlers; every one of them routes to `reconcile`.
"""
