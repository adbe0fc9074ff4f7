// k8s-validate reads Kubernetes manifests (YAML documents separated by ---)
// on stdin and decodes each strictly into the API's own Go types
// (k8s.io/api): an unknown field, a wrong type or an unknown kind is an
// error. It is the schema check of the Helm chart's rendered manifests
// (tests/test_helm.py); the schemas are the API types of k8s.io/api at the
// version in go.mod, fetched from the Go module proxy.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func main() {
	codecs := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
	decoder := codecs.UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	count, failed := 0, 0
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "reading YAML: %v\n", err)
			os.Exit(2)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		json, err := utilyaml.ToJSON(doc)
		if err != nil {
			fmt.Fprintf(os.Stderr, "document %d: not YAML: %v\n", count+1, err)
			failed++
			continue
		}
		if string(json) == "null" {
			continue
		}
		count++
		obj, gvk, err := decoder.Decode(json, nil, nil)
		if err != nil {
			fmt.Fprintf(os.Stderr, "document %d: %v\n", count, err)
			failed++
			continue
		}
		var _ runtime.Object = obj
		fmt.Printf("ok %s %s\n", gvk.GroupVersion().String(), gvk.Kind)
	}
	if failed > 0 || count == 0 {
		fmt.Fprintf(os.Stderr, "%d of %d documents invalid\n", failed, count)
		os.Exit(1)
	}
}
