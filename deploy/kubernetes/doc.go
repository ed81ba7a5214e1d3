// Package kubernetes holds the Kubernetes manifests of the sidecar
// deployment (deployment.yaml, service.yaml, README.md); its test decodes
// them strictly with the Kubernetes API types and checks that they agree
// with each other and with ftpalg's arguments. It has no code.
package kubernetes
