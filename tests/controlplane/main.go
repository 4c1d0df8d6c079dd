// Command chatcluster-kube is a multi-call binary holding the Kubernetes control plane and node
// the ChatCluster tests run against: kube-apiserver, kube-controller-manager, kube-scheduler,
// kubelet, kube-proxy and kubectl of one Kubernetes release (built from the k8s.io/kubernetes Go
// module), plus an embedded etcd.
//
// The component is chosen by the name the binary is called as (symlinks named
// kube-apiserver, etcd, kubectl, ...) or, failing that, by the first argument:
//
//	chatcluster-kube kube-apiserver --etcd-servers=...
//	kube-apiserver --etcd-servers=...      (symlink)
//
// Run one component per process: they keep global state (feature gates, metrics).
//
// When CHATCLUSTER_EXIT_ON_STDIN_EOF=1 is set, the process exits as soon as its standard
// input reaches end-of-file. A test harness keeps the write end of a pipe open, so the
// component dies with the test process even when the test is killed.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	_ "time/tzdata" // for CronJob time zone support, as in the upstream mains

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// components maps a component name to its entry point; args excludes the component name.
var components = map[string]func(args []string) int{
	"kube-apiserver": func(args []string) int {
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	},
	"kube-controller-manager": func(args []string) int {
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	},
	"kube-scheduler": func(args []string) int {
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	},
	"kubelet": func(args []string) int {
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		return cli.Run(cmd)
	},
	"kube-proxy": func(args []string) int {
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		return cli.Run(cmd)
	},
	"kubectl": runKubectl,
	"etcd":    runEtcd,
}

func runKubectl(args []string) int {
	// As upstream's cmd/kubectl: set the verbosity before the command is built.
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(append([]string{"kubectl"}, args...))) //nolint:errcheck
	// kubectl looks at os.Args for plugin lookup; present it as if called as kubectl.
	os.Args = append([]string{"kubectl"}, args...)
	command := kubectlcmd.NewDefaultKubectlCommand()
	command.SetArgs(args)
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	run, ok := components[name]
	if !ok && len(args) > 0 {
		name = args[0]
		run, ok = components[name]
		args = args[1:]
	}
	if !ok {
		names := make([]string, 0, len(components))
		for n := range components {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: %s <%s> [flags]\n", filepath.Base(os.Args[0]), strings.Join(names, "|"))
		os.Exit(2)
	}
	if os.Getenv("CHATCLUSTER_EXIT_ON_STDIN_EOF") == "1" {
		go exitOnStdinEOF(name)
	}
	os.Exit(run(args))
}

// exitOnStdinEOF blocks until standard input is closed, then ends the process at once.
func exitOnStdinEOF(name string) {
	_, _ = io.Copy(io.Discard, os.Stdin)
	fmt.Fprintf(os.Stderr, "%s: standard input closed (parent gone), exiting\n", name)
	os.Exit(3)
}
