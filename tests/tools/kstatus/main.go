// kstatus-check computes the kstatus status (sigs.k8s.io/cli-utils/pkg/kstatus/status, the
// library Flux's health checks and Helm 4's --wait use) of Kubernetes objects.
//
// It reads one object or a List (`kubectl get -o json`) as JSON on stdin and prints one JSON
// line per object: {"name": "<namespace>/<name>", "status": "Current|InProgress|Failed|...",
// "message": "..."}. The tests run it on ChatClusters read from the test control plane, so what
// they assert is what the real library computes, not our reading of its conventions.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus-check:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	var object unstructured.Unstructured
	if err := object.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("parsing the object: %w", err)
	}
	var objects []unstructured.Unstructured
	if object.IsList() {
		list, err := object.ToList()
		if err != nil {
			return fmt.Errorf("reading the list: %w", err)
		}
		objects = list.Items
	} else {
		objects = []unstructured.Unstructured{object}
	}
	encoder := json.NewEncoder(out)
	for i := range objects {
		result, err := status.Compute(&objects[i])
		if err != nil {
			return fmt.Errorf("computing the status of %s: %w", objects[i].GetName(), err)
		}
		name := objects[i].GetNamespace() + "/" + objects[i].GetName()
		if err := encoder.Encode(verdict{Name: name, Status: result.Status.String(), Message: result.Message}); err != nil {
			return err
		}
	}
	return nil
}
