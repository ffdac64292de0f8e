// Package deploy holds keyworker's deployment files (container images, a
// compose file, Kubernetes manifests, the NATS cluster configuration and
// stream definitions) and the tests that run them: a 3-node JetStream
// cluster and worker containers under failure, least-privilege NATS users,
// TLS client certificates, metrics and readiness. See README.md here.
//
// The package has no code of its own; it exists so `go test ./deploy/...`
// finds the tests.
package deploy
