package main

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func testConfig(t *testing.T, extra ...string) *Config {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"--data-dir=" + filepath.Join(dir, "data"), "--write-kubeconfig=" + filepath.Join(dir, "kc.yaml"),
		"--service-cidr=10.96.0.0/12", "--tls-san=vnest", "--tls-san=10.1.2.3", "--https-listen-port=7443"}, extra...)
	c, err := ParseServerFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestPKILayout(t *testing.T) {
	c := testConfig(t)
	if err := PreparePKI(c, t.Logf); err != nil {
		t.Fatal(err)
	}
	l := Layout{c.DataDir}
	for _, name := range []string{"server-ca", "client-ca", "request-header-ca", "serving-kube-apiserver",
		"client-admin", "client-controller", "client-kube-apiserver", "client-auth-proxy"} {
		for _, ext := range []string{".crt", ".key"} {
			if _, err := os.Stat(l.TLSFile(name + ext)); err != nil {
				t.Error(err)
			}
		}
		st, _ := os.Stat(l.TLSFile(name + ".key"))
		if st != nil && st.Mode().Perm() != 0o600 {
			t.Errorf("%s.key mode %o", name, st.Mode().Perm())
		}
	}
	for _, f := range []string{l.TLSFile("service.key"), l.TLSFile("service.current.key"),
		filepath.Join(l.Cred(), "admin.kubeconfig"), filepath.Join(l.Cred(), "controller.kubeconfig"), c.WriteKubeconfig} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, err, st)
		}
	}
	if st, err := os.Stat(l.DB()); err != nil || !st.IsDir() {
		t.Errorf("server/db: %v", err)
	}
	if k, err := readKey(l.TLSFile("service.key")); err != nil {
		t.Errorf("service.key: %v", err)
	} else if r, ok := k.(*rsa.PrivateKey); !ok || r.N.BitLen() != 2048 {
		t.Errorf("service.key: %T %v", k, err)
	}

	serving := readCert(t, l.TLSFile("serving-kube-apiserver.crt"))
	wantDNS := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local", "vnest"}
	if !sameSet(serving.DNSNames, wantDNS) {
		t.Errorf("serving DNS SANs %q, want %q", serving.DNSNames, wantDNS)
	}
	if !sameSet(ipStrings(serving.IPAddresses), []string{"127.0.0.1", "10.96.0.1", "10.1.2.3"}) {
		t.Errorf("serving IP SANs %q", ipStrings(serving.IPAddresses))
	}
	if err := serving.CheckSignatureFrom(readCert(t, l.TLSFile("server-ca.crt"))); err != nil {
		t.Errorf("serving cert not signed by server-ca: %v", err)
	}
	admin := readCert(t, l.TLSFile("client-admin.crt"))
	if admin.Subject.CommonName != "system:admin" || !slices.Equal(admin.Subject.Organization, []string{"system:masters"}) ||
		admin.CheckSignatureFrom(readCert(t, l.TLSFile("client-ca.crt"))) != nil {
		t.Errorf("client-admin: %v", admin.Subject)
	}
	if p := readCert(t, l.TLSFile("client-auth-proxy.crt")); p.CheckSignatureFrom(readCert(t, l.TLSFile("request-header-ca.crt"))) != nil {
		t.Error("client-auth-proxy not signed by request-header-ca")
	}
	kc, _ := os.ReadFile(filepath.Join(l.Cred(), "admin.kubeconfig"))
	if !strings.Contains(string(kc), `server: "https://127.0.0.1:7443"`) || !strings.Contains(string(kc), l.TLSFile("client-admin.key")) {
		t.Errorf("admin.kubeconfig:\n%s", kc)
	}
	wk, _ := os.ReadFile(c.WriteKubeconfig)
	if !strings.Contains(string(wk), "client-key-data:") || !strings.Contains(string(wk), "https://127.0.0.1:7443") {
		t.Errorf("--write-kubeconfig:\n%s", wk)
	}
}

// snapshot reads every file of server/tls.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = string(b)
	}
	return m
}

func TestPKIReusedOnRestart(t *testing.T) {
	c := testConfig(t)
	if err := PreparePKI(c, t.Logf); err != nil {
		t.Fatal(err)
	}
	l := Layout{c.DataDir}
	first := snapshot(t, l.TLS())
	if err := PreparePKI(c, t.Logf); err != nil {
		t.Fatal(err)
	}
	if second := snapshot(t, l.TLS()); !mapsEqual(first, second) {
		t.Error("a second start with the same flags changed server/tls")
	}

	// New --tls-san: only the serving certificate is reissued, under the same CA.
	c.TLSSANs = append(c.TLSSANs, "vnest.other.svc")
	if err := PreparePKI(c, t.Logf); err != nil {
		t.Fatal(err)
	}
	third := snapshot(t, l.TLS())
	for name, content := range first {
		changed := third[name] != content
		if want := strings.HasPrefix(name, "serving-kube-apiserver."); changed != want {
			t.Errorf("%s changed=%v, want %v", name, changed, want)
		}
	}
	if s := readCert(t, l.TLSFile("serving-kube-apiserver.crt")); !slices.Contains(s.DNSNames, "vnest.other.svc") {
		t.Errorf("new SAN missing: %q", s.DNSNames)
	}
}

func TestPKIRepairsAndRefuses(t *testing.T) {
	c := testConfig(t)
	if err := PreparePKI(c, t.Logf); err != nil {
		t.Fatal(err)
	}
	l := Layout{c.DataDir}
	// A leaf whose key was lost is reissued.
	if err := os.Remove(l.TLSFile("client-admin.key")); err != nil {
		t.Fatal(err)
	}
	if err := PreparePKI(c, t.Logf); err != nil {
		t.Fatal(err)
	}
	if _, err := loadPair(l.TLSFile("client-admin.crt"), l.TLSFile("client-admin.key")); err != nil {
		t.Errorf("client-admin not repaired: %v", err)
	}
	// Half a CA is refused, not replaced.
	if err := os.Remove(l.TLSFile("server-ca.key")); err != nil {
		t.Fatal(err)
	}
	if err := PreparePKI(c, t.Logf); err == nil || !strings.Contains(err.Error(), "refusing to replace the CA") {
		t.Errorf("got %v", err)
	}
	// Garbage in a key file is an error, not a panic.
	if err := os.WriteFile(l.TLSFile("server-ca.key"), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := PreparePKI(c, t.Logf); err == nil {
		t.Error("a garbage CA key was accepted")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
