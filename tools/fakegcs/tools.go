//go:build tools

// Package tools pins fake-gcs-server, the GCS emulator the storage tests run against.
package tools

import _ "github.com/fsouza/fake-gcs-server"
