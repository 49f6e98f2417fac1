//go:build tools

// Package tools pins the helm command that build-helm.sh compiles, so that
// `go mod tidy` keeps its dependencies in go.mod/go.sum. It is never compiled
// itself (build tag "tools"); build-helm.sh runs
//
//	go build helm.sh/helm/v4/cmd/helm
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm" // helm
)
