// The Pulumi Kubernetes provider plugin, built from Go modules for the Kubernetes tests.
//
// scripts/kube-tools.sh writes schema-embed.json and terraform-mapping-embed.json beside
// this file from the module's schema.json and terraform-mapping.json, then builds it.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var schema []byte

//go:embed terraform-mapping-embed.json
var mapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, schema, mapping)
}
