package main

import (
	"slices"
	"strings"
	"testing"
)

// The StatefulSet's command line (manifests/base/statefulset.yaml) after the shell expanded it.
var statefulSetArgs = []string{
	"--data-dir=/data",
	"--write-kubeconfig=/data/k3s-config/kube-config.yaml",
	"--service-cidr=10.96.0.0/12",
	"--tls-san=vnest", "--tls-san=vnest.ns", "--tls-san=vnest.ns.svc",
	"--disable=traefik,servicelb,metrics-server,local-storage,coredns",
	"--disable-network-policy", "--disable-agent", "--disable-scheduler", "--disable-cloud-controller",
	"--disable-helm-controller", "--egress-selector-mode=disabled", "--flannel-backend=none",
	"--kube-apiserver-arg=endpoint-reconciler-type=none",
	"--kube-controller-manager-arg=controllers=*,tokencleaner,-nodeipam,-nodelifecycle",
}

func TestParseStatefulSetCommandLine(t *testing.T) {
	c, err := ParseServerFlags(statefulSetArgs)
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/data" || c.WriteKubeconfig != "/data/k3s-config/kube-config.yaml" || c.ServiceCIDR != "10.96.0.0/12" {
		t.Errorf("paths/cidr: %+v", c)
	}
	if !slices.Equal(c.TLSSANs, []string{"vnest", "vnest.ns", "vnest.ns.svc"}) {
		t.Errorf("tls-san: %q", c.TLSSANs)
	}
	if len(c.Disable) != 5 || !c.DisableAgent || !c.DisableScheduler || !c.DisableNetworkPolicy ||
		!c.DisableCloudCtrl || !c.DisableHelmCtrl {
		t.Errorf("disable flags: %+v", c)
	}
	if c.HTTPSListenPort != 6443 || c.BindAddress != "0.0.0.0" || c.DatastoreEndpoint != "" {
		t.Errorf("defaults: port %d bind %q datastore %q", c.HTTPSListenPort, c.BindAddress, c.DatastoreEndpoint)
	}
	if !slices.Equal(c.ControllerMgrArgs, []string{"controllers=*,tokencleaner,-nodeipam,-nodelifecycle"}) {
		t.Errorf("kcm args kept whole: %q", c.ControllerMgrArgs)
	}
}

func TestBothFlagForms(t *testing.T) {
	eq, err1 := ParseServerFlags([]string{"--data-dir=/d", "--https-listen-port=7443", "--tls-san=a,b", "-token=x", "--disable-agent=false"})
	sp, err2 := ParseServerFlags([]string{"--data-dir", "/d", "--https-listen-port", "7443", "--tls-san", "a", "--tls-san", "b", "-token", "x"})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if eq.DataDir != sp.DataDir || eq.HTTPSListenPort != 7443 || sp.HTTPSListenPort != 7443 ||
		!slices.Equal(eq.TLSSANs, sp.TLSSANs) || eq.Token != "x" || sp.Token != "x" || eq.DisableAgent {
		t.Errorf("forms differ: %+v vs %+v", eq, sp)
	}
	// A boolean takes no separate value: the next word is the next flag.
	c, err := ParseServerFlags([]string{"--disable-agent", "--data-dir", "/d"})
	if err != nil || !c.DisableAgent || c.DataDir != "/d" {
		t.Errorf("bool then flag: %+v %v", c, err)
	}
}

func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag=1"}, "unknown flag: --no-such-flag"},
		{[]string{"--cluster-init"}, "unknown flag: --cluster-init"},
		{[]string{"--data-dir"}, "flag --data-dir needs a value"},
		{[]string{"stray"}, `unexpected argument "stray"`},
		{[]string{"--https-listen-port=70000"}, "not a TCP port"},
		{[]string{"--https-listen-port=x"}, "not a TCP port"},
		{[]string{"--service-cidr="}, "--service-cidr"},
		{[]string{"--service-cidr=10.0.0.0"}, "not a CIDR"},
		{[]string{"--service-cidr=10.0.0.1/32"}, "no address"},
		{[]string{"--bind-address=nowhere"}, "not an IP address"},
		{[]string{"--disable-agent=maybe"}, "not a boolean"},
		{[]string{"--egress-selector-mode=sometimes"}, "egress-selector-mode"},
		{[]string{"--kube-apiserver-arg==x"}, "no key=value"},
		{[]string{"--write-kubeconfig-mode=999"}, "octal"},
	} {
		_, err := ParseServerFlags(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestUnknownFlagExitsOne(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"server", "--bogus"}, &out, &errb); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.Contains(errb.String(), "unknown flag: --bogus") {
		t.Errorf("stderr: %q", errb.String())
	}
}

func TestMergeArgs(t *testing.T) {
	defaults := []Arg{{"bind-address", "127.0.0.1"}, {"controllers", "*,tokencleaner"}, {"v", "1"}}
	got, err := MergeArgs(defaults, []string{
		"controllers=*,-ttl",    // replaces in place
		"--v=4",                 // leading dashes dropped
		"feature-gates=A=true",  // new key, value keeps its "="
		"feature-gates=B=false", // same key again: a second flag, as k3s
		"profiling",             // bare key means true
		"bind-address+=::1",     // appends
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--bind-address=127.0.0.1,::1", "--controllers=*,-ttl", "--v=4",
		"--feature-gates=A=true", "--feature-gates=B=false", "--profiling=true"}
	if r := Render(got); !slices.Equal(r, want) {
		t.Errorf("got  %q\nwant %q", r, want)
	}
	if !slices.Equal(Render(defaults), []string{"--bind-address=127.0.0.1", "--controllers=*,tokencleaner", "--v=1"}) {
		t.Error("defaults were modified")
	}
}

func TestComponentArgs(t *testing.T) {
	c, err := ParseServerFlags(append(slices.Clone(statefulSetArgs),
		"--https-listen-port=7443", "--kube-apiserver-arg=v=3", "--bind-address=127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	api, err := APIServerArgs(c, AdvertiseAddress(c))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--secure-port=7443", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none", "--v=3", "--etcd-servers=unix:///data/server/kine.sock",
		"--service-cluster-ip-range=10.96.0.0/12", "--service-account-key-file=/data/server/tls/service.key"} {
		if !slices.Contains(api, want) {
			t.Errorf("apiserver args lack %s: %q", want, api)
		}
	}
	if slices.Contains(api, "--v=1") {
		t.Error("--v=1 not overridden")
	}
	kcm, err := ControllerManagerArgs(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--controllers=*,tokencleaner,-nodeipam,-nodelifecycle", "--leader-elect=false",
		"--kubeconfig=/data/server/cred/controller.kubeconfig", "--secure-port=0"} {
		if !slices.Contains(kcm, want) {
			t.Errorf("controller-manager args lack %s: %q", want, kcm)
		}
	}
	kine := KineArgs(c)
	if !slices.Contains(kine, "--endpoint=sqlite:///data/server/db/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate") {
		t.Errorf("kine args: %q", kine)
	}
	c.DatastoreEndpoint = "postgres://u:p@db:5432/k3s"
	if k := KineArgs(c); !slices.Contains(k, "--endpoint=postgres://u:p@db:5432/k3s") {
		t.Errorf("external datastore: %q", k)
	}
	if kcm, _ := ControllerManagerArgs(c); !slices.Contains(kcm, "--leader-elect=true") {
		t.Error("an external datastore should turn leader election on")
	}
}

func TestFirstServiceIPs(t *testing.T) {
	ips, err := FirstServiceIPs("10.96.0.0/12, fd00:10:96::/108")
	if err != nil {
		t.Fatal(err)
	}
	if got := ipStrings(ips); !slices.Equal(got, []string{"10.96.0.1", "fd00:10:96::1"}) {
		t.Errorf("got %q", got)
	}
}

func TestEnvironmentTwinsComeBeforeFlags(t *testing.T) {
	env := map[string]string{"K3S_DATASTORE_ENDPOINT": "postgres://u:p@db:5432/k3s", "K3S_TOKEN": "", "OTHER": "x"}
	got := envFlags(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if !slices.Equal(got, []string{"--datastore-endpoint=postgres://u:p@db:5432/k3s"}) {
		t.Fatalf("env flags: %q", got)
	}
	t.Setenv("K3S_DATASTORE_ENDPOINT", "postgres://from-env")
	c, err := ParseServerFlags([]string{"--data-dir=/d"})
	if err != nil || c.DatastoreEndpoint != "postgres://from-env" {
		t.Fatalf("from the environment: %v %q", err, c.DatastoreEndpoint)
	}
	c, err = ParseServerFlags([]string{"--data-dir=/d", "--datastore-endpoint=postgres://flag"})
	if err != nil || c.DatastoreEndpoint != "postgres://flag" {
		t.Fatalf("the flag wins: %v %q", err, c.DatastoreEndpoint)
	}
}
