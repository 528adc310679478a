//go:build kubelet

package main

import (
	"context"

	"k8s.io/component-base/cli"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// The kubelet, for the real-node tests (containerd and runc): `go build -tags kubelet`.
func init() {
	programs["kubelet"] = func() int {
		return cli.Run(kubelet.NewKubeletCommand(context.Background()))
	}
}
