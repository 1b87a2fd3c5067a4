package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
)

const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
)

type kubelet struct {
	cfg    *config
	podman *podmanCLI
	stats  *sampler
}

func newKubelet(c *config) *kubelet {
	p := &podmanCLI{binary: c.podman, runtime: c.runtime, node: c.node}
	return &kubelet{cfg: c, podman: p, stats: newSampler()}
}

// podKey is what cri-streaming hands back to the Executor/Attacher/PortForwarder as the pod's
// name: the namespace and name (the kubelet uses its own "full name" the same way).
func podKey(ns, pod string) string { return ns + "/" + pod }

func splitKey(key string) (string, string) {
	ns, pod, _ := strings.Cut(key, "/")
	return ns, pod
}

// target: the {namespace}/{pod}[/{uid}]/{container} tail of an exec or attach path.
func target(parts []string) (ns, pod, uid, ctr string, ok bool) {
	switch len(parts) {
	case 3:
		return parts[0], parts[1], "", parts[2], true
	case 4:
		return parts[0], parts[1], parts[2], parts[3], true
	}
	return "", "", "", "", false
}

func (k *kubelet) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/exec/", k.serveExec)
	mux.HandleFunc("/attach/", k.serveAttach)
	mux.HandleFunc("/portForward/", k.servePortForward)
	mux.HandleFunc("/containerLogs/", k.serveLogs)
	mux.HandleFunc("GET /pods", k.servePods)
	mux.HandleFunc("GET /pods/", k.servePods)
	mux.HandleFunc("GET /stats/summary", k.serveSummary)
	mux.HandleFunc("GET /stats/summary/", k.serveSummary)
	mux.HandleFunc("GET /metrics/resource", k.serveResourceMetrics)
	return mux
}

func pathParts(r *http.Request, prefix string) []string {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, prefix), "/")
	if rest == "" {
		return nil
	}
	return strings.Split(rest, "/")
}

// httpError answers err: 404 for a pod or container that is not on this node, 500 otherwise.
func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, errNotFound) {
		code = http.StatusNotFound
	}
	http.Error(w, err.Error(), code)
}

// running: the running container ns/pod/ctr, or an answered error.
func (k *kubelet) running(w http.ResponseWriter, r *http.Request, ns, pod, uid, ctr string) (container, bool) {
	c, err := k.podman.find(r.Context(), ns, pod, uid, ctr)
	if err != nil {
		httpError(w, err)
		return container{}, false
	}
	if !c.running() {
		http.Error(w, fmt.Sprintf("container %q of pod %s/%s is not running", ctr, ns, pod), http.StatusBadRequest)
		return container{}, false
	}
	return c, true
}

func (k *kubelet) serveExec(w http.ResponseWriter, r *http.Request) {
	ns, pod, uid, ctr, ok := target(pathParts(r, "/exec/"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	if len(cmd) == 0 {
		http.Error(w, "missing the command (command=...)", http.StatusBadRequest)
		return
	}
	c, ok := k.running(w, r, ns, pod, uid, ctr)
	if !ok {
		return
	}
	log.Printf("exec %s/%s/%s (stdin %t, tty %t)", ns, pod, ctr, opts.Stdin, opts.TTY)
	w, r = untilClientGoes(w, r)
	remotecommand.ServeExec(w, r, execer{k: k, id: c.ID}, podKey(ns, pod), uid, ctr, cmd, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

func (k *kubelet) serveAttach(w http.ResponseWriter, r *http.Request) {
	ns, pod, uid, ctr, ok := target(pathParts(r, "/attach/"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c, ok := k.running(w, r, ns, pod, uid, ctr)
	if !ok {
		return
	}
	w, r = untilClientGoes(w, r)
	remotecommand.ServeAttach(w, r, execer{k: k, id: c.ID}, podKey(ns, pod), uid, ctr, opts,
		streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
}

// untilClientGoes: r with a context that ends when the client's connection does. The request
// context of a hijacked (upgraded) connection does not, so the hijacked connection is watched:
// its close (SPDY closes it on the client's GOAWAY) and a failed read (through the
// bufio.Reader that Hijack returns, which the streaming library reads).
func untilClientGoes(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *http.Request) {
	h, ok := w.(http.Hijacker)
	if !ok {
		return w, r
	}
	ctx, cancel := context.WithCancel(r.Context())
	return watchedWriter{ResponseWriter: w, hijacker: h, gone: cancel}, r.WithContext(ctx)
}

type watchedWriter struct {
	http.ResponseWriter
	hijacker http.Hijacker
	gone     context.CancelFunc
}

func (w watchedWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := w.hijacker.Hijack()
	if err != nil {
		return nil, nil, err
	}
	reader := bufio.NewReader(&watchedReader{r: rw.Reader, gone: w.gone})
	return watchedConn{Conn: conn, gone: w.gone}, bufio.NewReadWriter(reader, rw.Writer), nil
}

// watchedConn calls gone when it is closed (SPDY closes it on the client's GOAWAY, before any
// read fails).
type watchedConn struct {
	net.Conn
	gone context.CancelFunc
}

func (c watchedConn) Close() error {
	c.gone()
	return c.Conn.Close()
}

// watchedReader calls gone at its first read error (the connection closed or broke).
type watchedReader struct {
	r    io.Reader
	gone context.CancelFunc
}

func (w *watchedReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if err != nil {
		w.gone()
	}
	return n, err
}

// execer runs exec and attach in one container found before the streams were upgraded.
type execer struct {
	k  *kubelet
	id string
}

func (e execer) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	return e.k.podman.exec(ctx, e.id, cmd, in, out, errw, tty, resize)
}

func (e execer) AttachContainer(ctx context.Context, _, _, _ string, _ io.Reader, out, errw io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	return e.k.podman.attach(ctx, e.id, out, errw)
}

func (k *kubelet) servePortForward(w http.ResponseWriter, r *http.Request) {
	parts := pathParts(r, "/portForward/")
	if len(parts) != 2 && len(parts) != 3 {
		http.NotFound(w, r)
		return
	}
	ns, pod, uid := parts[0], parts[1], ""
	if len(parts) == 3 {
		uid = parts[2]
	}
	if err := k.podOnNode(r.Context(), ns, pod, uid); err != nil {
		httpError(w, err)
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, k, podKey(ns, pod), uid, opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// PortForward (cri-streaming's PortForwarder): one forwarded connection to the pod's port.
func (k *kubelet) PortForward(ctx context.Context, _ string, _ string, port int32, stream io.ReadWriteCloser) error {
	return portForward(ctx, k.cfg.podHost, port, stream)
}

// podOnNode: nil when a running container of ns/pod (and uid) is on this node.
func (k *kubelet) podOnNode(ctx context.Context, ns, pod, uid string) error {
	list, err := k.podman.containers(ctx)
	if err != nil {
		return err
	}
	for _, c := range list {
		if c.namespace() == ns && c.pod() == pod && (uid == "" || c.uid() == uid) && c.running() {
			return nil
		}
	}
	return fmt.Errorf("pod %s/%s: %w", ns, pod, errNotFound)
}

// servePods: the node's pods as a PodList (identity and containers only: the runner's podman
// labels are all this server knows; the API server has the full objects).
func (k *kubelet) servePods(w http.ResponseWriter, r *http.Request) {
	list, err := k.podman.containers(r.Context())
	if err != nil {
		httpError(w, err)
		return
	}
	type ctr struct {
		Name string `json:"name"`
	}
	type pod struct {
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
			UID       string `json:"uid"`
		} `json:"metadata"`
		Spec struct {
			NodeName   string `json:"nodeName"`
			Containers []ctr  `json:"containers"`
		} `json:"spec"`
	}
	byUID := map[string]*pod{}
	var order []string
	for _, c := range list {
		if !c.running() || c.Labels[labelKind] == "init" {
			continue
		}
		p, seen := byUID[c.uid()]
		if !seen {
			p = &pod{}
			p.Metadata.Name, p.Metadata.Namespace, p.Metadata.UID = c.pod(), c.namespace(), c.uid()
			p.Spec.NodeName = k.cfg.node
			byUID[c.uid()] = p
			order = append(order, c.uid())
		}
		p.Spec.Containers = append(p.Spec.Containers, ctr{Name: c.name()})
	}
	items := make([]*pod, 0, len(order))
	for _, uid := range order {
		items = append(items, byUID[uid])
	}
	writeJSON(w, map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{}, "items": items})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Printf("writing a response: %v", err)
	}
}
