// Command kwok-stages prints kwok's default node and pod Stages as one multi-document YAML
// stream. Since kwok v0.8.0 a plain `kwok` process has no built-in stages and refuses to start
// without them; kwokctl writes these same defaults into the config it generates. Reading them
// from the kwok module keeps them in step with the kwok version we build.
package main

import (
	"fmt"
	"os"
	"strings"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodelease "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

func main() {
	stages := []string{
		nodefast.DefaultNodeInit,
		nodelease.DefaultNodeHeartbeatWithLease,
		podfast.DefaultPodReady,
		podfast.DefaultPodComplete,
		podfast.DefaultPodDelete,
	}
	for _, s := range stages {
		if _, err := fmt.Fprintf(os.Stdout, "---\n%s\n", strings.TrimSpace(s)); err != nil {
			os.Exit(1)
		}
	}
}
