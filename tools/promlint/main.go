// promlint checks a Prometheus text exposition (one /metrics page) on stdin with the very
// linter `promtool check metrics` runs (client_golang's testutil/promlint): metric and
// label naming, units, help text, counters named _total. Each problem is printed as
// "metric: text"; the exit status is 1 when there is any, 2 when the page cannot be parsed.
package main

import (
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func main() {
	problems, err := promlint.New(os.Stdin).Lint()
	if err != nil {
		fmt.Fprintln(os.Stderr, "promlint:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Printf("%s: %s\n", p.Metric, p.Text)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
}
