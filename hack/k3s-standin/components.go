package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Component is one child process: a binary name (looked up in the bin dir) and its argv.
type Component struct {
	Name string
	Args []string
}

// KineArgs: kine on a unix socket in the data dir, over SQLite in server/db unless
// --datastore-endpoint names another store.
func KineArgs(c *Config) []string {
	l := Layout{c.DataDir}
	endpoint := c.DatastoreEndpoint
	if endpoint == "" {
		endpoint = l.SQLiteEndpoint()
	}
	args := []Arg{
		{"endpoint", endpoint},
		{"listen-address", "unix://" + l.KineSocket()},
		{"metrics-bind-address", "0"},
	}
	for _, f := range []struct{ flag, value string }{
		{"ca-file", c.DatastoreCAFile}, {"cert-file", c.DatastoreCertFile}, {"key-file", c.DatastoreKeyFile},
	} {
		if f.value != "" {
			args = append(args, Arg{f.flag, f.value})
		}
	}
	return Render(args)
}

// usesSQLite: a single-writer datastore, so one replica and no leader election (as k3s).
func usesSQLite(c *Config) bool {
	return c.DatastoreEndpoint == "" || strings.HasPrefix(c.DatastoreEndpoint, "sqlite://")
}

// APIServerArgs: the flags start_virtual in hack/up.sh passes (those of the stock k3s server's
// embedded kube-apiserver), then --kube-apiserver-arg on top.
func APIServerArgs(c *Config, advertise string) ([]string, error) {
	l := Layout{c.DataDir}
	t := l.TLSFile
	defaults := []Arg{
		{"etcd-servers", "unix://" + l.KineSocket()},
		{"storage-backend", "etcd3"},
		{"bind-address", c.BindAddress},
		{"secure-port", strconv.Itoa(c.HTTPSListenPort)},
		{"advertise-address", advertise},
		{"endpoint-reconciler-type", "none"},
		{"allow-privileged", "true"},
		{"anonymous-auth", "false"},
		{"api-audiences", "https://kubernetes.default.svc.cluster.local,k3s"},
		{"authorization-mode", "Node,RBAC"},
		{"enable-admission-plugins", "NodeRestriction"},
		{"enable-aggregator-routing", "true"},
		{"enable-bootstrap-token-auth", "true"},
		{"client-ca-file", t("client-ca.crt")},
		{"tls-cert-file", t("serving-kube-apiserver.crt")},
		{"tls-private-key-file", t("serving-kube-apiserver.key")},
		{"kubelet-certificate-authority", t("server-ca.crt")},
		{"kubelet-client-certificate", t("client-kube-apiserver.crt")},
		{"kubelet-client-key", t("client-kube-apiserver.key")},
		{"kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname"},
		{"proxy-client-cert-file", t("client-auth-proxy.crt")},
		{"proxy-client-key-file", t("client-auth-proxy.key")},
		{"requestheader-allowed-names", "system:auth-proxy"},
		{"requestheader-client-ca-file", t("request-header-ca.crt")},
		{"requestheader-extra-headers-prefix", "X-Remote-Extra-"},
		{"requestheader-group-headers", "X-Remote-Group"},
		{"requestheader-username-headers", "X-Remote-User"},
		{"service-account-issuer", "https://kubernetes.default.svc.cluster.local"},
		{"service-account-key-file", t("service.key")},
		{"service-account-signing-key-file", t("service.current.key")},
		{"service-cluster-ip-range", c.ServiceCIDR},
		{"service-node-port-range", "30000-32767"},
		{"profiling", "false"},
		{"v", "1"},
	}
	args, err := MergeArgs(defaults, c.APIServerArgs)
	if err != nil {
		return nil, fmt.Errorf("--kube-apiserver-arg: %w", err)
	}
	return Render(args), nil
}

// ControllerManagerArgs: start_virtual's kube-controller-manager flags, then
// --kube-controller-manager-arg on top (e.g. controllers=...).
func ControllerManagerArgs(c *Config) ([]string, error) {
	l := Layout{c.DataDir}
	t := l.TLSFile
	kubeconfig := l.Cred() + "/controller.kubeconfig"
	defaults := []Arg{
		{"kubeconfig", kubeconfig},
		{"authentication-kubeconfig", kubeconfig},
		{"authorization-kubeconfig", kubeconfig},
		{"bind-address", "127.0.0.1"},
		{"secure-port", "0"},
		{"leader-elect", strconv.FormatBool(!usesSQLite(c))},
		{"use-service-account-credentials", "true"},
		{"service-account-private-key-file", t("service.current.key")},
		{"root-ca-file", t("server-ca.crt")},
		{"cluster-signing-kube-apiserver-client-cert-file", t("client-ca.crt")},
		{"cluster-signing-kube-apiserver-client-key-file", t("client-ca.key")},
		{"cluster-signing-kubelet-client-cert-file", t("client-ca.crt")},
		{"cluster-signing-kubelet-client-key-file", t("client-ca.key")},
		{"cluster-signing-kubelet-serving-cert-file", t("server-ca.crt")},
		{"cluster-signing-kubelet-serving-key-file", t("server-ca.key")},
		{"cluster-signing-legacy-unknown-cert-file", t("server-ca.crt")},
		{"cluster-signing-legacy-unknown-key-file", t("server-ca.key")},
		{"cluster-name", "kubernetes"},
		{"service-cluster-ip-range", c.ServiceCIDR},
		{"configure-cloud-routes", "false"},
		{"controllers", "*,tokencleaner"},
		{"profiling", "false"},
		{"v", "1"},
	}
	args, err := MergeArgs(defaults, c.ControllerMgrArgs)
	if err != nil {
		return nil, fmt.Errorf("--kube-controller-manager-arg: %w", err)
	}
	return Render(args), nil
}

// AdvertiseAddress: --advertise-address, else a specific --bind-address, else the first
// global unicast IPv4 address of this host (what kube-apiserver would pick from the default
// route), else loopback so that a network-less sandbox still starts.
func AdvertiseAddress(c *Config) string {
	if c.AdvertiseAddress != "" {
		return c.AdvertiseAddress
	}
	if ip := net.ParseIP(c.BindAddress); ip != nil && !ip.IsUnspecified() {
		return ip.String()
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
