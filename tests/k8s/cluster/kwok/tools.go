//go:build tools

// Package tools pins kwok for build.sh (tests/k8s/cluster/build.sh kwok), so
// that `go mod tidy` keeps its dependencies in go.mod/go.sum. It is never
// compiled itself (build tag "tools").
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok" // kwok: fake nodes and pods for the test cluster
)
