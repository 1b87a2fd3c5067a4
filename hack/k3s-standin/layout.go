package main

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Layout is the k3s data dir as the stand-in lays it out (the same file names as k3s, and as
// hack/up.sh's start_virtual): the syncer reads server/tls and server/cred from it.
type Layout struct {
	DataDir string
}

func (l Layout) Server() string             { return filepath.Join(l.DataDir, "server") }
func (l Layout) TLS() string                { return filepath.Join(l.DataDir, "server", "tls") }
func (l Layout) Cred() string               { return filepath.Join(l.DataDir, "server", "cred") }
func (l Layout) DB() string                 { return filepath.Join(l.DataDir, "server", "db") }
func (l Layout) KineSocket() string         { return filepath.Join(l.DataDir, "server", "kine.sock") }
func (l Layout) TLSFile(name string) string { return filepath.Join(l.TLS(), name) }

// SQLiteEndpoint is kine's endpoint for the default datastore (the DSN options start_virtual
// and vcluster use).
func (l Layout) SQLiteEndpoint() string {
	return "sqlite://" + filepath.Join(l.DB(), "state.db") +
		"?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
}

// ServingSANs lists the serving certificate's names: the in-cluster names of the kubernetes
// Service, loopback, the Service's ClusterIP(s), every --tls-san, and an explicitly given bind or
// advertise address.
func ServingSANs(c *Config) ([]string, []net.IP, error) {
	dns := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local"}
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	svc, err := FirstServiceIPs(c.ServiceCIDR)
	if err != nil {
		return nil, nil, err
	}
	ips = append(ips, svc...)
	for _, a := range []string{c.BindAddress, c.AdvertiseAddress} {
		if ip := net.ParseIP(a); ip != nil && !ip.IsUnspecified() {
			ips = append(ips, ip)
		}
	}
	sanDNS, sanIPs := splitSANs(c.TLSSANs)
	return dedupe(append(dns, sanDNS...)), dedupeIPs(append(ips, sanIPs...)), nil
}

// PreparePKI creates (first start) or reuses (restart) the CAs, leaf certificates, service
// account keys and kubeconfigs of the data dir.
func PreparePKI(c *Config, logf Logf) error {
	l := Layout{c.DataDir}
	for _, d := range []string{l.TLS(), l.Cred(), l.DB()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	cas := map[string]*CA{}
	for _, name := range []string{"server-ca", "client-ca", "request-header-ca"} {
		ca, err := EnsureCA(l.TLS(), name, "k3s-"+name, logf)
		if err != nil {
			return err
		}
		cas[name] = ca
	}
	dns, ips, err := ServingSANs(c)
	if err != nil {
		return err
	}
	leaves := []struct {
		ca   string
		spec LeafSpec
	}{
		{"server-ca", LeafSpec{Name: "serving-kube-apiserver", CN: "kube-apiserver", Usage: x509.ExtKeyUsageServerAuth, DNSNames: dns, IPs: ips}},
		{"client-ca", LeafSpec{Name: "client-admin", CN: "system:admin", Orgs: []string{"system:masters"}, Usage: x509.ExtKeyUsageClientAuth}},
		{"client-ca", LeafSpec{Name: "client-controller", CN: "system:kube-controller-manager", Usage: x509.ExtKeyUsageClientAuth}},
		{"client-ca", LeafSpec{Name: "client-kube-apiserver", CN: "system:kube-apiserver", Usage: x509.ExtKeyUsageClientAuth}},
		{"request-header-ca", LeafSpec{Name: "client-auth-proxy", CN: "system:auth-proxy", Usage: x509.ExtKeyUsageClientAuth}},
	}
	for _, leaf := range leaves {
		if err := EnsureLeaf(l.TLS(), cas[leaf.ca], leaf.spec, logf); err != nil {
			return err
		}
	}
	if err := EnsureRSAKey(l.TLSFile("service.key"), logf); err != nil {
		return err
	}
	if err := CopyIfMissing(l.TLSFile("service.key"), l.TLSFile("service.current.key"), 0o600); err != nil {
		return fmt.Errorf("service.current.key: %w", err)
	}
	return writeKubeconfigs(c, l)
}

// APIHost is where local clients reach the API server: loopback unless it is bound to one
// specific address.
func APIHost(c *Config) string {
	ip := net.ParseIP(c.BindAddress)
	if ip == nil || ip.IsUnspecified() || ip.IsLoopback() {
		return "127.0.0.1"
	}
	return ip.String()
}

// APIServerURL is https://<APIHost>:<port>.
func APIServerURL(c *Config) string {
	return "https://" + net.JoinHostPort(APIHost(c), strconv.Itoa(c.HTTPSListenPort))
}

// writeKubeconfigs writes server/cred/{admin,controller}.kubeconfig (file references into
// server/tls, as k3s writes them) and --write-kubeconfig (the admin credentials inlined).
func writeKubeconfigs(c *Config, l Layout) error {
	server := APIServerURL(c)
	for _, kc := range []struct{ file, cert string }{
		{"admin.kubeconfig", "client-admin"},
		{"controller.kubeconfig", "client-controller"},
	} {
		data := kubeconfig(server, map[string]string{
			"certificate-authority": l.TLSFile("server-ca.crt"),
		}, map[string]string{
			"client-certificate": l.TLSFile(kc.cert + ".crt"),
			"client-key":         l.TLSFile(kc.cert + ".key"),
		})
		if err := writeFileIfChanged(filepath.Join(l.Cred(), kc.file), data, 0o600); err != nil {
			return err
		}
	}
	if c.WriteKubeconfig == "" {
		return nil
	}
	err := writeInlineKubeconfig(c, l, server)
	if err != nil && c.set["write-kubeconfig"] {
		return fmt.Errorf("--write-kubeconfig: %w", err)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "[k3s-standin] warning: default kubeconfig not written: %v\n", err)
	}
	return nil
}

func writeInlineKubeconfig(c *Config, l Layout, server string) error {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(l.TLSFile(name))
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err1 := read("server-ca.crt")
	crt, err2 := read("client-admin.crt")
	key, err3 := read("client-admin.key")
	for _, err := range []error{err1, err2, err3} {
		if err != nil {
			return err
		}
	}
	data := kubeconfig(server, map[string]string{"certificate-authority-data": ca},
		map[string]string{"client-certificate-data": crt, "client-key-data": key})
	if err := os.MkdirAll(filepath.Dir(c.WriteKubeconfig), 0o755); err != nil {
		return err
	}
	return writeFileIfChanged(c.WriteKubeconfig, data, c.WriteKubeconfigMode)
}

// kubeconfig renders a one-context kubeconfig ("default", as k3s names it). Scalars are JSON
// strings, which YAML reads as double-quoted strings whatever the path contains.
func kubeconfig(server string, cluster, user map[string]string) []byte {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n")
	b.WriteString("    server: " + q(server) + "\n")
	for _, k := range sortedKeys(cluster) {
		b.WriteString("    " + k + ": " + q(cluster[k]) + "\n")
	}
	b.WriteString("users:\n- name: default\n  user:\n")
	for _, k := range sortedKeys(user) {
		b.WriteString("    " + k + ": " + q(user[k]) + "\n")
	}
	b.WriteString("contexts:\n- name: default\n  context:\n    cluster: default\n    user: default\n")
	b.WriteString("current-context: default\n")
	return []byte(b.String())
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	return keys
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func dedupeIPs(ips []net.IP) []net.IP {
	seen := map[string]bool{}
	var out []net.IP
	for _, ip := range ips {
		if !seen[ip.String()] {
			seen[ip.String()] = true
			out = append(out, ip)
		}
	}
	return out
}
