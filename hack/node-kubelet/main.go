// Command node-kubelet serves the kubelet API of the local world's runner node (hack/runner,
// which runs that node's pods as podman containers): what the host API server calls for
// `kubectl exec / attach / port-forward / logs / cp` of those pods and for the node proxy
// (`/pods`, `/healthz`, `/stats/summary`, `/metrics/resource`).
//
// exec, attach and port-forward speak the kubelet's own streaming protocols (SPDY, and
// WebSocket) through k8s.io/cri-streaming, the library the kubelet's CRI streaming server is
// built from; the commands behind them are `podman exec`, `podman attach` and a TCP dial of the
// pod's port (every pod of that node shares this machine's network). Stdin reaching its end
// closes the command's stdin, so `tar xf -` (kubectl cp into a pod) ends.
//
// Only callers with a client certificate signed by -client-ca get in, and of those only the
// users named by -allow-user or members of -allow-group (the host API server's kubelet client
// certificate is one): the kubelet API runs commands in every pod of the node.
//
// Test world only (hack/up.sh starts it next to the runner); not a kubelet replacement.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type config struct {
	listen     string
	node       string
	tlsCert    string
	tlsKey     string
	clientCA   string
	allowUsers []string
	allowGroup []string
	logDir     string
	podman     string
	runtime    string
	podHost    string
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("node-kubelet", flag.ContinueOnError)
	c := &config{}
	var users, groups string
	fs.StringVar(&c.listen, "listen", "", "address:port to serve on (the node's InternalIP and kubelet port)")
	fs.StringVar(&c.node, "node", "", "the runner's node name (its containers carry the label dev.vnest.runner.node=<node>)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "serving certificate (PEM)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "serving key (PEM)")
	fs.StringVar(&c.clientCA, "client-ca", "", "CA bundle (PEM) that signs the callers' client certificates (the host cluster's client CA)")
	fs.StringVar(&users, "allow-user", "kube-apiserver-kubelet-client", "comma-separated certificate common names allowed in")
	fs.StringVar(&groups, "allow-group", "system:masters", "comma-separated certificate organizations (groups) allowed in")
	fs.StringVar(&c.logDir, "log-dir", "", "the runner's --log-dir: <namespace>_<pod>_<container>.log in CRI format")
	fs.StringVar(&c.podman, "podman", "podman", "podman binary")
	fs.StringVar(&c.runtime, "runtime", "/usr/sbin/runc", "OCI runtime given to podman (crun fails on this kernel)")
	fs.StringVar(&c.podHost, "pod-host", "127.0.0.1", "where a pod's ports answer (the pods share this machine's network)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	for name, v := range map[string]string{"-listen": c.listen, "-node": c.node, "-tls-cert": c.tlsCert,
		"-tls-key": c.tlsKey, "-client-ca": c.clientCA, "-log-dir": c.logDir} {
		if v == "" {
			return nil, fmt.Errorf("%s is required", name)
		}
	}
	c.allowUsers = splitList(users)
	c.allowGroup = splitList(groups)
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// allowed reports whether a verified client certificate may use this node's kubelet API.
func (c *config) allowed(cert *x509.Certificate) bool {
	for _, u := range c.allowUsers {
		if cert.Subject.CommonName == u {
			return true
		}
	}
	for _, o := range cert.Subject.Organization {
		for _, g := range c.allowGroup {
			if o == g {
				return true
			}
		}
	}
	return false
}

// authenticated wraps h: 401 without a verified client certificate, 403 for one not allowed.
func authenticated(c *config, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
			http.Error(w, "Unauthorized: a client certificate of the cluster's client CA is required", http.StatusUnauthorized)
			return
		}
		leaf := r.TLS.VerifiedChains[0][0]
		if !c.allowed(leaf) {
			http.Error(w, fmt.Sprintf("Forbidden: user %q may not use the kubelet API of node %s", leaf.Subject.CommonName, c.node), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func tlsConfig(c *config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	pem, err := os.ReadFile(c.clientCA)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client CA %s: no PEM certificate", c.clientCA)
	}
	// A missing certificate is let through the handshake and answered 401 (as a kubelet does).
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	c, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Fatalf("node-kubelet: %v", err)
	}
	tc, err := tlsConfig(c)
	if err != nil {
		log.Fatalf("node-kubelet: %v", err)
	}
	k := newKubelet(c)
	srv := &http.Server{
		Addr:              c.listen,
		Handler:           authenticated(c, k.routes()),
		TLSConfig:         tc,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(os.Stderr, "http: ", log.LstdFlags),
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
		_ = srv.Close() // upgraded streams are hijacked: Shutdown does not end them
	}()
	log.Printf("node-kubelet of node %s serving on https://%s", c.node, c.listen)
	if err := srv.ListenAndServeTLS("", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("node-kubelet: %v", err)
	}
	log.Printf("node-kubelet stopped")
}
