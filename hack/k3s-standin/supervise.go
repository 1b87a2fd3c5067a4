package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// output serialises whole lines from all children onto one stream.
type output struct {
	mu sync.Mutex
	w  io.Writer
}

// prefixWriter writes each complete line as "[name] line"; Flush writes a trailing partial one.
type prefixWriter struct {
	out    *output
	prefix []byte
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.emit(p.buf[:i+1])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) Flush() {
	if len(p.buf) > 0 {
		p.emit(append(p.buf, '\n'))
		p.buf = nil
	}
}

func (p *prefixWriter) emit(line []byte) {
	p.out.mu.Lock()
	defer p.out.mu.Unlock()
	_, _ = p.out.w.Write(append(append([]byte(nil), p.prefix...), line...))
}

// child is one running process.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // its exit status, valid after done
}

// childExit reports that a child ended on its own.
type childExit struct {
	name string
	err  error
}

// Supervisor starts children, reports the first one that exits, and stops them all in reverse
// start order.
type Supervisor struct {
	stdout, stderr *output
	children       []*child
	exits          chan childExit
}

func NewSupervisor(stdout, stderr io.Writer) *Supervisor {
	return &Supervisor{stdout: &output{w: stdout}, stderr: &output{w: stderr}, exits: make(chan childExit, 8)}
}

// Logf writes one line of the stand-in's own on stderr, in the children's format.
func (s *Supervisor) Logf(format string, args ...any) {
	s.stderr.mu.Lock()
	defer s.stderr.mu.Unlock()
	fmt.Fprintf(s.stderr.w, "[k3s-standin] "+format+"\n", args...)
}

// Start runs path with args as child name. Children get their own process group (a terminal's
// Ctrl-C reaches only the stand-in, which stops them in order) and SIGKILL if the stand-in dies.
func (s *Supervisor) Start(name, path string, args []string) error {
	cmd := exec.Command(path, args...)
	outW := &prefixWriter{out: s.stdout, prefix: []byte("[" + name + "] ")}
	errW := &prefixWriter{out: s.stderr, prefix: []byte("[" + name + "] ")}
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second // a grandchild keeping the pipes open does not block Wait
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s (%s): %w", name, path, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	s.children = append(s.children, c)
	s.Logf("started %s (pid %d)", name, cmd.Process.Pid)
	go func() {
		c.err = cmd.Wait()
		outW.Flush()
		errW.Flush()
		close(c.done)
		s.exits <- childExit{name: name, err: c.err}
	}()
	return nil
}

// Exits delivers the first child that ends (and any later ones).
func (s *Supervisor) Exits() <-chan childExit { return s.exits }

// StopAll sends SIGTERM to each child, newest first, waits for it until the shared deadline,
// and SIGKILLs whatever is left then. It returns once every child has exited.
func (s *Supervisor) StopAll(grace time.Duration) {
	deadline := time.Now().Add(grace)
	for i := len(s.children) - 1; i >= 0; i-- {
		c := s.children[i]
		select {
		case <-c.done:
			continue
		default:
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		timer := time.NewTimer(time.Until(deadline))
		select {
		case <-c.done:
			s.Logf("%s stopped", c.name)
		case <-timer.C:
			s.Logf("%s did not stop within %s: killing it", c.name, grace)
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		timer.Stop()
	}
}

// WaitFor polls check every interval until it returns nil, the timeout passes, ctx ends
// (a signal), or a child exits; each of those but the first is an error saying which.
func (s *Supervisor) WaitFor(ctx context.Context, what string, timeout time.Duration, check func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errStopped
		case e := <-s.exits:
			return exitError(e)
		case <-deadline.C:
			return fmt.Errorf("%s: not ready after %s: %v", what, timeout, last)
		case <-tick.C:
		}
	}
}

// errStopped means a stop signal arrived: not a failure.
var errStopped = errors.New("stop signal received")

func exitError(e childExit) error {
	if e.err == nil {
		return fmt.Errorf("%s exited (status 0) while it should keep running", e.name)
	}
	return fmt.Errorf("%s exited: %v", e.name, e.err)
}

// isExecutable reports whether path is a regular file with an execute bit.
func isExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
