package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProcess runs the stand-in as a plain process (the local world's process fallback) with
// the binaries in $K3S_STANDIN_BIN_DIR: /readyz, /version, the default ServiceAccount, then
// SIGTERM must stop everything with exit code 0. Skipped unless that variable is set:
//
//	K3S_STANDIN_BIN_DIR=$(hack/build-tools.sh --print-dir) go test -run TestProcess -v .
func TestProcess(t *testing.T) {
	if os.Getenv("K3S_STANDIN_BIN_DIR") == "" {
		t.Skip("K3S_STANDIN_BIN_DIR is not set")
	}
	dir := t.TempDir()
	self := filepath.Join(dir, "k3s")
	if out, err := exec.Command("go", "build", "-o", self, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	port := freePort(t)
	data := filepath.Join(dir, "data")
	cmd := exec.Command(self, "server", "--data-dir", data, "--write-kubeconfig="+filepath.Join(dir, "kc.yaml"),
		"--service-cidr=10.96.0.0/12", "--https-listen-port", fmt.Sprint(port), "--bind-address=127.0.0.1",
		"--disable-agent", "--disable-scheduler", "--kube-apiserver-arg=endpoint-reconciler-type=none")
	logFile, err := os.Create(filepath.Join(dir, "out.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("stand-in output (tail):\n%s", tail(string(b), 40))
		}
	}()

	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	var client *http.Client
	waitUntil(t, done, 120*time.Second, "/readyz", func() error {
		if client == nil {
			c, err := adminClient(data)
			if err != nil {
				return err
			}
			client = c
		}
		return get(client, base+"/readyz", nil)
	})
	var version string
	if err := get(client, base+"/version", &version); err != nil || !strings.Contains(version, `"gitVersion"`) {
		t.Fatalf("/version: %v %s", err, version)
	}
	waitUntil(t, done, 60*time.Second, "ServiceAccount default/default", func() error {
		return get(client, base+"/api/v1/namespaces/default/serviceaccounts/default", nil)
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after SIGTERM: %v (want exit code 0)", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15 s after SIGTERM")
	}
}

func adminClient(data string) (*http.Client, error) {
	tlsDir := filepath.Join(data, "server", "tls")
	pair, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "client-admin.crt"), filepath.Join(tlsDir, "client-admin.key"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(tlsDir, "server-ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}}, nil
}

func get(c *http.Client, url string, body *string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if body != nil {
		*body = string(b)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// waitUntil polls check; the stand-in exiting meanwhile fails the test at once.
func waitUntil(t *testing.T, done <-chan error, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case exitErr := <-done:
			t.Fatalf("the stand-in exited (%v) while waiting for %s", exitErr, what)
		case <-time.After(250 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready after %s: %v", what, timeout, err)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
