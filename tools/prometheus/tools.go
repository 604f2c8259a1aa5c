//go:build tools

// Package tools pins Prometheus and promtool, built from the Go module proxy for the tests
// (tests/gotools.py: go_tool("prometheus", "github.com/prometheus/prometheus/cmd/promtool")):
// promtool checks and unit-tests the chart's alerts, and the lab's Prometheus scrapes the
// operator. Built with -tags remove_all_sd: the tests name their targets themselves.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
