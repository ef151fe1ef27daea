//go:build tools

// Package tools pins upstream melange, built at set-up time as the oracle of the
// differential suite, and the source of the pipelines melange ships.
package tools

import _ "chainguard.dev/melange"
