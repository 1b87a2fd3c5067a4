package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The labels hack/runner puts on every container it starts.
const (
	labelNode      = "dev.vnest.runner.node"
	labelPodUID    = "dev.vnest.runner.pod-uid"
	labelNamespace = "dev.vnest.runner.pod-namespace"
	labelPodName   = "dev.vnest.runner.pod-name"
	labelContainer = "dev.vnest.runner.container"
	labelKind      = "dev.vnest.runner.container-kind"
)

// errNotFound: no such pod or container on this node (answered 404).
var errNotFound = errors.New("not found")

// container is one podman container of the runner's node.
type container struct {
	ID        string            `json:"Id"`
	State     string            `json:"State"`
	StartedAt int64             `json:"StartedAt"`
	Created   int64             `json:"Created"`
	Labels    map[string]string `json:"Labels"`
}

func (c container) namespace() string { return c.Labels[labelNamespace] }
func (c container) pod() string       { return c.Labels[labelPodName] }
func (c container) uid() string       { return c.Labels[labelPodUID] }
func (c container) name() string      { return c.Labels[labelContainer] }
func (c container) running() bool     { return c.State == "running" }

type podmanCLI struct {
	binary  string
	runtime string
	node    string
}

// command: podman with the runtime and cgroup manager that work on this kernel.
func (p *podmanCLI) command(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--runtime", p.runtime, "--cgroup-manager", "cgroupfs"}, args...)
	return exec.CommandContext(ctx, p.binary, all...)
}

func (p *podmanCLI) output(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := p.command(ctx, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("podman %s: %w: %s", args[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// containers: every container of this node (running or not), newest first.
func (p *podmanCLI) containers(ctx context.Context) ([]container, error) {
	out, err := p.output(ctx, "ps", "-a", "--filter", "label="+labelNode+"="+p.node, "--format", "json")
	if err != nil {
		return nil, err
	}
	var list []container
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("podman ps: %w", err)
	}
	sort.SliceStable(list, func(i, j int) bool { return list[i].Created > list[j].Created })
	return list, nil
}

// find: the container of pod ns/name (and uid, when given) named name, preferring a running
// one, then the newest.
func (p *podmanCLI) find(ctx context.Context, ns, pod, uid, name string) (container, error) {
	list, err := p.containers(ctx)
	if err != nil {
		return container{}, err
	}
	var found *container
	for i := range list {
		c := list[i]
		if c.namespace() != ns || c.pod() != pod || c.name() != name || (uid != "" && c.uid() != uid) {
			continue
		}
		if c.running() {
			return c, nil
		}
		if found == nil {
			found = &list[i]
		}
	}
	if found == nil {
		return container{}, fmt.Errorf("container %q of pod %s/%s: %w", name, ns, pod, errNotFound)
	}
	return *found, nil
}

// exitError turns podman's exit status into the error cri-streaming reports as the
// command's exit code.
func exitError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return utilexec.CodeExitError{Err: err, Code: ee.ExitCode()}
	}
	return err
}

// execMarker is the environment variable that tags the processes of one exec: when the client
// goes away before the command ends, they are killed (killing `podman exec` alone leaves the
// command running under conmon).
const execMarker = "VNEST_NODE_KUBELET_EXEC"

func newExecToken() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return hex.EncodeToString(b)
}

// killMarked SIGKILLs every process whose environment holds execMarker=token.
func killMarked(token string) {
	needle := []byte(execMarker + "=" + token + "\x00")
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, d := range procs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err == nil && bytes.Contains(env, needle) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// exec runs cmd in container id with `podman exec`. Stdin is copied until its end and then
// closed, so the command sees EOF; the exec ends when the command does, or when ctx ends (the
// client went away): then the command's processes are killed.
func (p *podmanCLI) exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	token := newExecToken()
	args := []string{"exec", "-e", execMarker + "=" + token}
	if in != nil {
		args = append(args, "-i")
	}
	if tty {
		args = append(args, "-t")
	}
	args = append(args, id)
	args = append(args, cmd...)
	c := p.command(ctx, args...)
	c.Cancel = func() error {
		killMarked(token)
		return c.Process.Kill()
	}
	c.WaitDelay = 5 * time.Second
	if tty {
		return runTTY(c, in, out, resize)
	}
	c.Stdout = out
	c.Stderr = errw
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	if err := c.Start(); err != nil {
		return err
	}
	if stdin != nil {
		// Not waited for: a client that keeps stdin open must not keep a finished exec alive.
		go func() {
			_, _ = io.Copy(stdin, in)
			_ = stdin.Close()
		}()
	}
	return exitError(c.Wait())
}

// runTTY runs c on a pseudo-terminal: stdin to it, its output to out, resizes applied.
func runTTY(c *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommand.TerminalSize) error {
	ptmx, err := pty.Start(c)
	if err != nil {
		return err
	}
	defer ptmx.Close()
	if resize != nil {
		go func() {
			for size := range resize {
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: size.Height, Cols: size.Width})
			}
		}()
	}
	if in != nil {
		go func() { _, _ = io.Copy(ptmx, in) }()
	}
	var wg sync.WaitGroup
	if out != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(out, ptmx) // ends with EIO once the command has exited
		}()
	}
	err = exitError(c.Wait())
	_ = ptmx.Close()
	wg.Wait()
	return err
}

// attach streams the running container's output (`podman attach`; the runner starts
// containers without stdin, so there is none to attach to).
func (p *podmanCLI) attach(ctx context.Context, id string, out, errw io.WriteCloser) error {
	c := p.command(ctx, "attach", "--no-stdin", "--sig-proxy=false", id)
	c.Stdout = out
	c.Stderr = errw
	if c.Stdout == nil {
		c.Stdout = io.Discard
	}
	if c.Stderr == nil {
		c.Stderr = io.Discard
	}
	err := c.Run()
	if ctx.Err() != nil {
		return nil // the client went away
	}
	return exitError(err)
}

// portForward copies between stream and host:port (the pods share this machine's network).
func portForward(ctx context.Context, host string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port %d of the pod: %w", port, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(stream, conn)
		done <- struct{}{}
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// inspectCgroup: the container's cgroup path below each controller (podman's State.CgroupPath).
func (p *podmanCLI) cgroupPaths(ctx context.Context, ids []string) (map[string]string, error) {
	if len(ids) == 0 {
		return map[string]string{}, nil
	}
	args := append([]string{"inspect", "--format", "{{.Id}} {{.State.CgroupPath}}"}, ids...)
	out, err := p.output(ctx, args...)
	if err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for _, line := range bytes.Split(out, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) == 2 {
			paths[string(f[0])] = string(f[1])
		}
	}
	return paths, nil
}
