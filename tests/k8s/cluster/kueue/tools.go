//go:build tools

// Package tools pins Kueue for build.sh (tests/k8s/cluster/build.sh kueue), so that
// `go mod tidy` keeps its dependencies in go.mod/go.sum. It is never compiled itself
// (build tag "tools").
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue" // the Kueue controller manager (its package main)
)
