package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// logOptions: the kubelet's containerLogs query (PodLogOptions as the API server sends them).
type logOptions struct {
	follow     bool
	timestamps bool
	tailLines  int64 // -1: all
	since      time.Time
	limitBytes int64 // 0: no limit
}

func parseLogOptions(r *http.Request) (logOptions, error) {
	q := r.URL.Query()
	o := logOptions{tailLines: -1}
	o.follow = q.Get("follow") == "true"
	o.timestamps = q.Get("timestamps") == "true"
	if v := q.Get("tailLines"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return o, fmt.Errorf("tailLines %q: not a non-negative integer", v)
		}
		o.tailLines = n
	}
	if v := q.Get("sinceSeconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("sinceSeconds %q: not a positive integer", v)
		}
		o.since = time.Now().Add(-time.Duration(n) * time.Second)
	}
	if v := q.Get("sinceTime"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return o, fmt.Errorf("sinceTime %q: %w", v, err)
		}
		o.since = t
	}
	if v := q.Get("limitBytes"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("limitBytes %q: not a positive integer", v)
		}
		o.limitBytes = n
	}
	return o, nil
}

// criLine is one line of a CRI log file: "<RFC3339Nano> <stream> <P|F> <text>".
type criLine struct {
	time    time.Time
	partial bool
	text    []byte
}

func parseCRILine(line []byte) (criLine, bool) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	f := bytes.SplitN(line, []byte(" "), 4)
	if len(f) < 3 {
		return criLine{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(f[0]))
	if err != nil {
		return criLine{}, false
	}
	l := criLine{time: t, partial: string(f[2]) == "P"}
	if len(f) == 4 {
		l.text = f[3]
	}
	return l, true
}

// render writes one log line as the kubelet does: the text (with a newline unless the line is
// a partial one), prefixed with its time when asked.
func (o logOptions) render(l criLine) []byte {
	var b []byte
	if o.timestamps {
		b = append(b, l.time.Format(time.RFC3339Nano)...)
		b = append(b, ' ')
	}
	b = append(b, l.text...)
	if !l.partial {
		b = append(b, '\n')
	}
	return b
}

// limitedWriter stops after n bytes (n <= 0: no limit) and reports it.
type limitedWriter struct {
	w    io.Writer
	left int64
	on   bool
}

var errLimit = fmt.Errorf("limitBytes reached")

func (l *limitedWriter) Write(p []byte) (int, error) {
	if !l.on {
		return l.w.Write(p)
	}
	if l.left <= 0 {
		return 0, errLimit
	}
	if int64(len(p)) > l.left {
		n, err := l.w.Write(p[:l.left])
		l.left -= int64(n)
		if err == nil {
			err = errLimit
		}
		return n, err
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}

// serveLogs: /containerLogs/{namespace}/{pod}/{container} from the runner's log file of that
// container (restarts append to it, so there are no separate previous logs).
func (k *kubelet) serveLogs(w http.ResponseWriter, r *http.Request) {
	parts := pathParts(r, "/containerLogs/")
	if len(parts) != 3 {
		http.NotFound(w, r)
		return
	}
	ns, pod, ctr := parts[0], parts[1], parts[2]
	o, err := parseLogOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.URL.Query().Get("previous") == "true" {
		http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found (this node keeps one log per container)", ctr, pod), http.StatusBadRequest)
		return
	}
	c, err := k.podman.find(r.Context(), ns, pod, "", ctr)
	if err != nil {
		httpError(w, err)
		return
	}
	f, err := os.Open(filepath.Join(k.cfg.logDir, fmt.Sprintf("%s_%s_%s.log", ns, pod, ctr)))
	if err != nil {
		httpError(w, fmt.Errorf("log of container %q: %w", ctr, err))
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	out := &limitedWriter{w: w, left: o.limitBytes, on: o.limitBytes > 0}
	flusher, _ := w.(http.Flusher)
	reader := bufio.NewReaderSize(f, 64<<10)

	// The existing lines (the last tailLines of those since `since`).
	var tail [][]byte
	var pending []byte
	for {
		line, err := reader.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] != '\n' {
			pending = line // a line still being written: continue it when following
			break
		}
		if len(line) > 0 {
			if l, ok := parseCRILine(line); ok && !l.time.Before(o.since) {
				b := o.render(l)
				if o.tailLines < 0 {
					if _, werr := out.Write(b); werr != nil {
						return
					}
				} else if o.tailLines > 0 {
					tail = append(tail, b)
					if int64(len(tail)) > o.tailLines {
						tail = tail[1:]
					}
				}
			}
		}
		if err != nil {
			break
		}
	}
	for _, b := range tail {
		if _, err := out.Write(b); err != nil {
			return
		}
	}
	if flusher != nil {
		flusher.Flush()
	}
	if !o.follow {
		return
	}
	k.followLog(r.Context(), reader, pending, c, out, flusher, o)
}

// followLog writes what is appended to the log until the client goes or the container stops.
func (k *kubelet) followLog(ctx context.Context, reader *bufio.Reader, pending []byte, c container, out io.Writer, flusher http.Flusher, o logOptions) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastCheck := time.Now()
	for {
		line, err := reader.ReadBytes('\n')
		pending = append(pending, line...)
		if err == nil {
			if l, ok := parseCRILine(pending); ok && !l.time.Before(o.since) {
				if _, werr := out.Write(o.render(l)); werr != nil {
					return
				}
				if flusher != nil {
					flusher.Flush()
				}
			}
			pending = pending[:0]
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if time.Since(lastCheck) > 2*time.Second {
			lastCheck = time.Now()
			now, ferr := k.podman.find(ctx, c.namespace(), c.pod(), c.uid(), c.name())
			if ferr != nil || !now.running() || now.ID != c.ID {
				return // stopped or restarted (a kubelet ends the follow with the container)
			}
		}
	}
}
