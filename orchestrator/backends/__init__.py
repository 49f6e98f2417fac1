"""Backends carry the core's decisions out: the local Ray runtime, and KubeRay (`operator`)."""
