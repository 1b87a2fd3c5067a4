package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPrefixWriter(t *testing.T) {
	var b strings.Builder
	w := &prefixWriter{out: &output{w: &b}, prefix: []byte("[x] ")}
	_, _ = w.Write([]byte("one\ntw"))
	_, _ = w.Write([]byte("o\nthree"))
	w.Flush()
	if got, want := b.String(), "[x] one\n[x] two\n[x] three\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestSupervisorReportsExitAndStopsTheRest(t *testing.T) {
	var out, errb strings.Builder
	s := NewSupervisor(&out, &errb)
	if err := s.Start("sleeper", "/bin/sh", []string{"-c", "echo up; exec sleep 30"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start("failer", "/bin/sh", []string{"-c", "sleep 0.3; echo bad >&2; exit 3"}); err != nil {
		t.Fatal(err)
	}
	err := s.WaitFor(context.Background(), "never", 10*time.Second, func() error { return errors.New("not yet") })
	if err == nil || !strings.Contains(err.Error(), "failer exited: exit status 3") {
		t.Fatalf("got %v", err)
	}
	start := time.Now()
	s.StopAll(5 * time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("StopAll took %s: SIGTERM did not stop sleep", d)
	}
	if !strings.Contains(out.String(), "[sleeper] up\n") || !strings.Contains(errb.String(), "[failer] bad\n") {
		t.Errorf("output not prefixed per child:\nstdout %q\nstderr %q", out.String(), errb.String())
	}
}

func TestSupervisorKillsAfterGrace(t *testing.T) {
	var out strings.Builder
	s := NewSupervisor(&out, &out)
	if err := s.Start("stubborn", "/bin/sh", []string{"-c", "trap '' TERM; while :; do sleep 0.1; done"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the shell set its trap
	start := time.Now()
	s.StopAll(500 * time.Millisecond)
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("StopAll took %s", d)
	}
	if !strings.Contains(out.String(), "stubborn did not stop within") {
		t.Errorf("no kill message: %q", out.String())
	}
}

func TestWaitForStopSignal(t *testing.T) {
	s := NewSupervisor(&strings.Builder{}, &strings.Builder{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.WaitFor(ctx, "x", time.Second, func() error { return errors.New("no") }); !errors.Is(err, errStopped) {
		t.Errorf("got %v", err)
	}
}
