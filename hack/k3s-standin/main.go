// Command k3s is a test-only stand-in for the rancher/k3s image's /bin/k3s: `k3s server` lays
// out the k3s data dir (PKI, kubeconfigs, SQLite) and runs kine, kube-apiserver and
// kube-controller-manager as child processes with the flags the stock k3s server would give
// its embedded components. See README.md.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Version is what `k3s --version` prints (the tag of the image this stands in for).
var Version = "v1.35.4+k3s1"

const (
	stopGrace       = 8 * time.Second // the pod's terminationGracePeriodSeconds is 10
	kineTimeout     = 30 * time.Second
	apiServerTimout = 120 * time.Second
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 1
	}
	switch args[0] {
	case "server":
		return runServer(args[1:], stdout, stderr)
	case "--version", "-v", "version":
		fmt.Fprintf(stdout, "k3s version %s (vnest stand-in)\n", Version)
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "k3s stand-in: unknown command %q (only `server` is implemented)\n", args[0])
	return 1
}

const usage = `k3s stand-in (vnest, tests only): runs kine + kube-apiserver + kube-controller-manager
the way a stock k3s server with --disable-agent runs its embedded control plane.

Usage: k3s server [flags]     (see hack/k3s-standin/README.md for the accepted flags)
       k3s --version
`

func runServer(args []string, stdout, stderr io.Writer) int {
	cfg, err := ParseServerFlags(args)
	if errors.Is(err, errHelp) {
		fmt.Fprintf(stdout, "%saccepted flags: %s\n", usage, knownFlags())
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "k3s server: %v\n", err)
		return 1
	}
	sup := NewSupervisor(stdout, stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, cfg, sup); err != nil {
		if errors.Is(err, errStopped) {
			sup.Logf("stop signal: stopping")
			sup.StopAll(stopGrace)
			sup.Logf("stopped")
			return 0
		}
		sup.Logf("error: %v", err)
		if len(sup.children) > 0 {
			sup.Logf("stopping the other components")
			sup.StopAll(stopGrace)
		}
		return 1
	}
	return 0
}

// serve prepares the data dir, starts the components one after the other, and then waits
// for a stop signal (returns errStopped) or for a component to exit (returns that error).
func serve(ctx context.Context, cfg *Config, sup *Supervisor) error {
	warnIgnored(cfg, sup)
	bins, err := findBinaries()
	if err != nil {
		return err
	}
	if err := checkSocketPath(Layout{cfg.DataDir}.KineSocket()); err != nil {
		return err
	}
	if err := PreparePKI(cfg, sup.Logf); err != nil {
		return fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	apiArgs, err := APIServerArgs(cfg, AdvertiseAddress(cfg))
	if err != nil {
		return err
	}
	kcmArgs, err := ControllerManagerArgs(cfg)
	if err != nil {
		return err
	}
	started := time.Now()
	if err := startKine(ctx, cfg, sup, bins["kine"]); err != nil {
		return err
	}
	if err := sup.Start("kube-apiserver", bins["kube-apiserver"], apiArgs); err != nil {
		return err
	}
	readyz, err := readyzCheck(cfg)
	if err != nil {
		return err
	}
	if err := sup.WaitFor(ctx, "kube-apiserver /readyz", apiServerTimout, readyz); err != nil {
		return err
	}
	sup.Logf("kube-apiserver ready on %s after %s", APIServerURL(cfg), time.Since(started).Round(time.Millisecond))
	if err := sup.Start("kube-controller-manager", bins["kube-controller-manager"], kcmArgs); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return errStopped
	case e := <-sup.Exits():
		return exitError(e)
	}
}

func startKine(ctx context.Context, cfg *Config, sup *Supervisor, path string) error {
	sock := Layout{cfg.DataDir}.KineSocket()
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the stale kine socket %s: %w", sock, err)
	}
	if err := sup.Start("kine", path, KineArgs(cfg)); err != nil {
		return err
	}
	return sup.WaitFor(ctx, "kine socket "+sock, kineTimeout, func() error {
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

// readyzCheck GETs /readyz with the admin client certificate (anonymous auth is off).
func readyzCheck(cfg *Config) (func() error, error) {
	l := Layout{cfg.DataDir}
	pair, err := tls.LoadX509KeyPair(l.TLSFile("client-admin.crt"), l.TLSFile("client-admin.key"))
	if err != nil {
		return nil, fmt.Errorf("admin client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(l.TLSFile("server-ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no certificate", l.TLSFile("server-ca.crt"))
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
	}}
	url := APIServerURL(cfg) + "/readyz"
	return func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s: %s", url, resp.Status, lastLine(body))
		}
		return nil
	}, nil
}

// findBinaries locates kine, kube-apiserver and kube-controller-manager in
// $K3S_STANDIN_BIN_DIR or, by default, next to this executable.
func findBinaries() (map[string]string, error) {
	dir := os.Getenv("K3S_STANDIN_BIN_DIR")
	if dir == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding the component binaries: %w (set K3S_STANDIN_BIN_DIR)", err)
		}
		if resolved, err := filepath.EvalSymlinks(self); err == nil {
			self = resolved
		}
		dir = filepath.Dir(self)
	}
	bins := map[string]string{}
	for _, name := range []string{"kine", "kube-apiserver", "kube-controller-manager"} {
		path := filepath.Join(dir, name)
		if err := isExecutable(path); err != nil {
			return nil, fmt.Errorf("component binary %s: %w (binaries are looked up in $K3S_STANDIN_BIN_DIR, else next to /bin/k3s)", name, err)
		}
		bins[name] = path
	}
	return bins, nil
}

// checkSocketPath: a unix socket path holds at most 107 bytes (sun_path).
func checkSocketPath(path string) error {
	if len(path) > 107 {
		return fmt.Errorf("kine socket path %s is %d bytes, more than a unix socket allows (107): use a shorter --data-dir", path, len(path))
	}
	return nil
}

// warnIgnored says which k3s features the stand-in does not have when they were not disabled.
func warnIgnored(cfg *Config, sup *Supervisor) {
	if !cfg.DisableAgent {
		sup.Logf("note: no agent (kubelet) runs in this stand-in, as with --disable-agent")
	}
	if !cfg.DisableScheduler {
		sup.Logf("note: no kube-scheduler runs in this stand-in, as with --disable-scheduler")
	}
}

func lastLine(b []byte) string {
	s := string(b)
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
