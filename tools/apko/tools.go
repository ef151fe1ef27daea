//go:build tools

// Package tools pins apko, built at set-up time as an independent checker.
package tools

import _ "chainguard.dev/apko"
