//go:build tools

// Package tools pins krew and its manifest validator, built from the Go module proxy for
// tests/integration/test_krew.py: validate-krew-manifest checks integrations/krew/kopfvirt.yaml
// and krew installs the plugin from it as a user's krew would.
package tools

import (
	_ "sigs.k8s.io/krew/cmd/krew"
	_ "sigs.k8s.io/krew/cmd/validate-krew-manifest"
)
