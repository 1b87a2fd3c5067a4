package main

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"
	"time"

	utilexec "k8s.io/utils/exec"
)

func TestTargetTakesTheKubeletPathShapes(t *testing.T) {
	for _, c := range []struct {
		path              string
		ns, pod, uid, ctr string
		ok                bool
	}{
		{"/exec/ns/pod/main", "ns", "pod", "", "main", true},
		{"/exec/ns/pod/uid-1/main", "ns", "pod", "uid-1", "main", true},
		{"/exec/ns/pod", "", "", "", "", false},
		{"/exec/ns/pod/uid/main/more", "", "", "", "", false},
	} {
		r := httptest.NewRequest("GET", c.path, nil)
		ns, pod, uid, ctr, ok := target(pathParts(r, "/exec/"))
		if ok != c.ok || ns != c.ns || pod != c.pod || uid != c.uid || ctr != c.ctr {
			t.Errorf("%s: got %q %q %q %q %v", c.path, ns, pod, uid, ctr, ok)
		}
	}
}

func TestOnlyAllowedUsersOrGroupsGetIn(t *testing.T) {
	c := &config{node: "n", allowUsers: []string{"kube-apiserver-kubelet-client"}, allowGroup: []string{"system:masters"}}
	cert := func(cn string, orgs ...string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn, Organization: orgs}}
	}
	if !c.allowed(cert("kube-apiserver-kubelet-client")) || !c.allowed(cert("admin", "system:masters")) {
		t.Error("the API server's kubelet client or an admin was refused")
	}
	if c.allowed(cert("someone", "system:authenticated")) {
		t.Error("a stranger got in")
	}
}

func TestCRILinesRenderAsTheKubeletDoes(t *testing.T) {
	l, ok := parseCRILine([]byte("2026-01-01T00:00:01.5Z stdout F hello world\n"))
	if !ok || string(l.text) != "hello world" || l.partial {
		t.Fatalf("parsed %+v %v", l, ok)
	}
	if got := string(logOptions{}.render(l)); got != "hello world\n" {
		t.Errorf("plain: %q", got)
	}
	if got := string(logOptions{timestamps: true}.render(l)); got != "2026-01-01T00:00:01.5Z hello world\n" {
		t.Errorf("timestamps: %q", got)
	}
	p, ok := parseCRILine([]byte("2026-01-01T00:00:02Z stderr P part"))
	if !ok || !p.partial || string(logOptions{}.render(p)) != "part" {
		t.Errorf("partial: %+v", p)
	}
	e, ok := parseCRILine([]byte("2026-01-01T00:00:02Z stdout F"))
	if !ok || string(logOptions{}.render(e)) != "\n" {
		t.Errorf("empty line: %+v %v", e, ok)
	}
	if _, ok := parseCRILine([]byte("not a log line")); ok {
		t.Error("garbage parsed")
	}
}

func TestLogOptionsFromTheQuery(t *testing.T) {
	r := httptest.NewRequest("GET", "/containerLogs/a/b/c?follow=true&tailLines=3&timestamps=true&limitBytes=10&sinceSeconds=60", nil)
	o, err := parseLogOptions(r)
	if err != nil || !o.follow || !o.timestamps || o.tailLines != 3 || o.limitBytes != 10 {
		t.Fatalf("%+v %v", o, err)
	}
	if time.Since(o.since) < 59*time.Second || time.Since(o.since) > 61*time.Second {
		t.Errorf("since %v", o.since)
	}
	for _, q := range []string{"tailLines=-1", "sinceSeconds=0", "limitBytes=x", "sinceTime=yesterday"} {
		if _, err := parseLogOptions(httptest.NewRequest("GET", "/containerLogs/a/b/c?"+q, nil)); err == nil {
			t.Errorf("%s accepted", q)
		}
	}
}

func TestLimitBytesCutsTheOutput(t *testing.T) {
	var b bytes.Buffer
	w := &limitedWriter{w: &b, left: 5, on: true}
	if n, err := w.Write([]byte("abc")); n != 3 || err != nil {
		t.Fatal(n, err)
	}
	if n, err := w.Write([]byte("defg")); n != 2 || !errors.Is(err, errLimit) {
		t.Fatal(n, err)
	}
	if b.String() != "abcde" {
		t.Errorf("%q", b.String())
	}
}

func TestExitCodesBecomeCodeExitErrors(t *testing.T) {
	err := exitError(exec.Command("sh", "-c", "exit 3").Run())
	var ce utilexec.CodeExitError
	if !errors.As(err, &ce) || ce.ExitStatus() != 3 || !ce.Exited() {
		t.Fatalf("%T %v", err, err)
	}
	if exitError(nil) != nil {
		t.Error("success became an error")
	}
}

func TestCPURateNeedsASecondReading(t *testing.T) {
	s := newSampler()
	t0 := time.Now()
	if u := s.rate("c", usage{at: t0, cpuNs: 1_000_000_000}); u.nanoCores != 0 {
		t.Errorf("first reading has a rate: %d", u.nanoCores)
	}
	u := s.rate("c", usage{at: t0.Add(2 * time.Second), cpuNs: 2_000_000_000})
	if u.nanoCores != 500_000_000 {
		t.Errorf("half a core expected, got %d", u.nanoCores)
	}
	// A reading under a second later keeps the last rate.
	if u := s.rate("c", usage{at: t0.Add(2500 * time.Millisecond), cpuNs: 2_000_000_000}); u.nanoCores != 500_000_000 {
		t.Errorf("kept rate: %d", u.nanoCores)
	}
}

func TestAHijackedConnectionEndsTheRequestContext(t *testing.T) {
	for _, how := range []string{"close", "peer goes"} {
		server, client := net.Pipe()
		rec := &hijackable{ResponseRecorder: httptest.NewRecorder(), conn: server}
		w, r := untilClientGoes(rec, httptest.NewRequest("GET", "/exec/a/b/c", nil))
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Fatal(err)
		}
		if r.Context().Err() != nil {
			t.Fatal("ended before the client went")
		}
		if how == "close" {
			_ = conn.Close()
		} else {
			_ = client.Close()
			_, _ = rw.Read(make([]byte, 1))
		}
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the request context did not end", how)
		}
		_ = client.Close()
	}
}

type hijackable struct {
	*httptest.ResponseRecorder
	conn net.Conn
}

func (h *hijackable) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.conn, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(h.conn)), nil
}
