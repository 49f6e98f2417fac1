//go:build tools

// Package tools pins the commands that build.sh compiles, so that
// `go mod tidy` keeps their dependencies in go.mod/go.sum. It is never
// compiled itself (build tag "tools"); build.sh runs
//
//	go build k8s.io/kubernetes/cmd/kube-apiserver ...
package tools

import (
	_ "go.etcd.io/etcd/server/v3"                     // etcd (package main of the etcd server module)
	_ "k8s.io/kubernetes/cmd/kube-apiserver"          // kube-apiserver
	_ "k8s.io/kubernetes/cmd/kube-controller-manager" // kube-controller-manager
	_ "k8s.io/kubernetes/cmd/kube-scheduler"          // kube-scheduler
	_ "k8s.io/kubernetes/cmd/kubectl"                 // kubectl
)
