// kstatus judges Kubernetes objects as Flux, kubectl's status readers and cli-utils do
// (sigs.k8s.io/cli-utils/pkg/kstatus/status): it reads one object per line (JSON) on
// stdin and prints, per line, {"status": "...", "message": "..."}. The integration tests
// ask it about the lab's objects, so "kstatus-correct" is judged by kstatus' own code.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		object := &unstructured.Unstructured{} // numbers as int64, as the API machinery reads them
		if err := object.UnmarshalJSON(in.Bytes()); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: not a Kubernetes object:", err)
			os.Exit(2)
		}
		result, err := status.Compute(object)
		v := verdict{}
		if err != nil {
			v.Error = err.Error()
		} else {
			v.Status, v.Message = result.Status.String(), result.Message
		}
		if err := out.Encode(v); err != nil {
			os.Exit(1)
		}
	}
}
