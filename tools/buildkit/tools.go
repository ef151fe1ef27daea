//go:build tools

// Package tools pins the BuildKit module whose buildkitd and buildctl the
// local farm runs, and whose .proto files generate our Python gRPC stubs.
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
