//go:build tools

// Package tools pins the KubeRay operator for build.sh (tests/k8s/cluster/build.sh
// kuberay), so that `go mod tidy` keeps its dependencies in go.mod/go.sum. It is
// never compiled itself (build tag "tools").
package tools

import (
	_ "github.com/ray-project/kuberay/ray-operator" // the KubeRay operator (its package main)
)
