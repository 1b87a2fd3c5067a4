package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const cgroupRoot = "/sys/fs/cgroup"

// usage: one reading of a container's (or the node's) CPU and memory.
type usage struct {
	at           time.Time
	cpuNs        uint64 // cumulative CPU time
	nanoCores    uint64 // CPU rate over the last interval
	memUsage     uint64
	workingSet   uint64
	rss          uint64
	memAvailable uint64 // node only
}

// readUint reads one unsigned number from a file.
func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// readKeyed reads "key value" lines (memory.stat, cpu.stat).
func readKeyed(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]uint64{}
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) == 2 {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m, nil
}

// readCgroup reads the container cgroup at path (podman's State.CgroupPath): the v1
// cpuacct and memory controllers, or the unified (v2) hierarchy.
func readCgroup(path string) (usage, error) {
	u := usage{at: time.Now()}
	if cpu, err := readUint(filepath.Join(cgroupRoot, "cpuacct", path, "cpuacct.usage")); err == nil {
		u.cpuNs = cpu
		mem, err := readUint(filepath.Join(cgroupRoot, "memory", path, "memory.usage_in_bytes"))
		if err != nil {
			return u, err
		}
		stat, err := readKeyed(filepath.Join(cgroupRoot, "memory", path, "memory.stat"))
		if err != nil {
			return u, err
		}
		u.memUsage, u.rss = mem, stat["total_rss"]
		u.workingSet = mem - min(mem, stat["total_inactive_file"])
		return u, nil
	}
	dir := filepath.Join(cgroupRoot, path)
	if _, err := os.Stat(filepath.Join(dir, "cpu.stat")); err != nil {
		dir = filepath.Join(cgroupRoot, "unified", path)
	}
	cpu, err := readKeyed(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return u, err
	}
	mem, err := readUint(filepath.Join(dir, "memory.current"))
	if err != nil {
		return u, err
	}
	stat, err := readKeyed(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return u, err
	}
	u.cpuNs = cpu["usage_usec"] * 1000
	u.memUsage, u.rss = mem, stat["anon"]
	u.workingSet = mem - min(mem, stat["inactive_file"])
	return u, nil
}

// readNode reads the machine's CPU time (/proc/stat) and memory (/proc/meminfo).
func readNode() (usage, error) {
	u := usage{at: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return u, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return u, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks uint64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseUint(v, 10, 64)
		ticks += n
	}
	u.cpuNs = ticks * uint64(time.Second/100) // USER_HZ is 100 on Linux
	// /proc/meminfo: "Name:   value kB" lines.
	mem := map[string]uint64{}
	mb, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return u, err
	}
	for _, l := range strings.Split(string(mb), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			if v, err := strconv.ParseUint(f[1], 10, 64); err == nil {
				mem[strings.TrimSuffix(f[0], ":")] = v * 1024
			}
		}
	}
	u.memAvailable = mem["MemAvailable"]
	u.memUsage = mem["MemTotal"] - min(mem["MemTotal"], mem["MemFree"])
	u.workingSet = mem["MemTotal"] - min(mem["MemTotal"], mem["MemAvailable"])
	u.rss = mem["AnonPages"]
	return u, nil
}

// sampler remembers the previous reading of each container (and of the node) to give CPU rates.
type sampler struct {
	mu   sync.Mutex
	prev map[string]usage
}

func newSampler() *sampler { return &sampler{prev: map[string]usage{}} }

// rate fills cur.nanoCores from the previous reading of key (kept when it is under 1 s old).
func (s *sampler) rate(key string, cur usage) usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, ok := s.prev[key]
	if ok && cur.at.Sub(prev.at) < time.Second {
		cur.nanoCores = prev.nanoCores
		return cur
	}
	if ok && cur.cpuNs >= prev.cpuNs {
		cur.nanoCores = uint64(float64(cur.cpuNs-prev.cpuNs) / cur.at.Sub(prev.at).Seconds())
	}
	s.prev[key] = cur
	return cur
}

func (s *sampler) known(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.prev[key]
	return ok
}

// podStats: the running containers of one pod with their readings.
type podStats struct {
	ns, name, uid string
	start         time.Time
	containers    []ctrStats
}

type ctrStats struct {
	name  string
	start time.Time
	u     usage
}

// collect reads every running container of the node, grouped by pod (the pods of this node
// in podman's order, containers by name), and the node itself.
func (k *kubelet) collect(ctx context.Context) ([]podStats, usage, error) {
	list, err := k.podman.containers(ctx)
	if err != nil {
		return nil, usage{}, err
	}
	var running []container
	var ids []string
	for _, c := range list {
		if c.running() {
			running = append(running, c)
			ids = append(ids, c.ID)
		}
	}
	paths, err := k.podman.cgroupPaths(ctx, ids)
	if err != nil {
		return nil, usage{}, err
	}
	read := func() (map[string]usage, usage) {
		out := map[string]usage{}
		for _, c := range running {
			u, err := readCgroup(paths[c.ID])
			if err != nil {
				log.Printf("stats of container %s: %v", c.ID[:12], err)
				continue
			}
			out[c.ID] = u
		}
		node, err := readNode()
		if err != nil {
			log.Printf("node stats: %v", err)
		}
		return out, node
	}
	// The first reading of anything new gets a second one shortly after, for a CPU rate.
	fresh := !k.stats.known("node")
	for _, c := range running {
		fresh = fresh || !k.stats.known(c.ID)
	}
	if fresh {
		first, node := read()
		for id, u := range first {
			k.stats.rate(id, u)
		}
		k.stats.rate("node", node)
		select {
		case <-ctx.Done():
			return nil, usage{}, ctx.Err()
		case <-time.After(1100 * time.Millisecond):
		}
	}
	readings, nodeU := read()
	nodeU = k.stats.rate("node", nodeU)
	byUID := map[string]*podStats{}
	var pods []*podStats
	for _, c := range running {
		u, ok := readings[c.ID]
		if !ok {
			continue
		}
		u = k.stats.rate(c.ID, u)
		p := byUID[c.uid()]
		if p == nil {
			p = &podStats{ns: c.namespace(), name: c.pod(), uid: c.uid()}
			byUID[c.uid()] = p
			pods = append(pods, p)
		}
		start := time.Unix(c.StartedAt, 0)
		if p.start.IsZero() || start.Before(p.start) {
			p.start = start
		}
		p.containers = append(p.containers, ctrStats{name: c.name(), start: start, u: u})
	}
	out := make([]podStats, 0, len(pods))
	for _, p := range pods {
		sort.Slice(p.containers, func(i, j int) bool { return p.containers[i].name < p.containers[j].name })
		out = append(out, *p)
	}
	return out, nodeU, nil
}

func (p podStats) total() usage {
	var t usage
	for _, c := range p.containers {
		t.at = c.u.at
		t.cpuNs += c.u.cpuNs
		t.nanoCores += c.u.nanoCores
		t.memUsage += c.u.memUsage
		t.workingSet += c.u.workingSet
		t.rss += c.u.rss
	}
	return t
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func cpuJSON(u usage) map[string]any {
	return map[string]any{"time": rfc3339(u.at), "usageNanoCores": u.nanoCores, "usageCoreNanoSeconds": u.cpuNs}
}

func memJSON(u usage) map[string]any {
	m := map[string]any{"time": rfc3339(u.at), "usageBytes": u.memUsage, "workingSetBytes": u.workingSet,
		"rssBytes": u.rss, "pageFaults": 0, "majorPageFaults": 0}
	if u.memAvailable > 0 {
		m["availableBytes"] = u.memAvailable
	}
	return m
}

var bootTime = func() time.Time {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Now()
	}
	f := strings.Fields(string(b))
	up, _ := strconv.ParseFloat(f[0], 64)
	return time.Now().Add(-time.Duration(up * float64(time.Second)))
}()

// serveSummary: the kubelet's /stats/summary (stats/v1alpha1): the node, and each running pod
// with its containers' CPU and memory from their cgroups.
func (k *kubelet) serveSummary(w http.ResponseWriter, r *http.Request) {
	pods, node, err := k.collect(r.Context())
	if err != nil {
		httpError(w, err)
		return
	}
	items := make([]map[string]any, 0, len(pods))
	for _, p := range pods {
		ctrs := make([]map[string]any, 0, len(p.containers))
		for _, c := range p.containers {
			ctrs = append(ctrs, map[string]any{"name": c.name, "startTime": rfc3339(c.start),
				"cpu": cpuJSON(c.u), "memory": memJSON(c.u)})
		}
		t := p.total()
		items = append(items, map[string]any{
			"podRef":     map[string]string{"name": p.name, "namespace": p.ns, "uid": p.uid},
			"startTime":  rfc3339(p.start),
			"containers": ctrs,
			"cpu":        cpuJSON(t),
			"memory":     memJSON(t),
		})
	}
	writeJSON(w, map[string]any{
		"node": map[string]any{"nodeName": k.cfg.node, "startTime": rfc3339(bootTime),
			"cpu": cpuJSON(node), "memory": memJSON(node)},
		"pods": items,
	})
}

func promEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// serveResourceMetrics: the kubelet's /metrics/resource (what metrics-server scrapes).
func (k *kubelet) serveResourceMetrics(w http.ResponseWriter, r *http.Request) {
	pods, node, err := k.collect(r.Context())
	if err != nil {
		httpError(w, err)
		return
	}
	var b strings.Builder
	ms := func(t time.Time) int64 { return t.UnixMilli() }
	family := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	family("container_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the container in core-seconds")
	for _, p := range pods {
		for _, c := range p.containers {
			fmt.Fprintf(&b, "container_cpu_usage_seconds_total{container=\"%s\",namespace=\"%s\",pod=\"%s\"} %g %d\n",
				promEscape(c.name), promEscape(p.ns), promEscape(p.name), float64(c.u.cpuNs)/1e9, ms(c.u.at))
		}
	}
	family("container_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the container in bytes")
	for _, p := range pods {
		for _, c := range p.containers {
			fmt.Fprintf(&b, "container_memory_working_set_bytes{container=\"%s\",namespace=\"%s\",pod=\"%s\"} %d %d\n",
				promEscape(c.name), promEscape(p.ns), promEscape(p.name), c.u.workingSet, ms(c.u.at))
		}
	}
	family("container_start_time_seconds", "gauge", "[STABLE] Start time of the container since unix epoch in seconds")
	for _, p := range pods {
		for _, c := range p.containers {
			fmt.Fprintf(&b, "container_start_time_seconds{container=\"%s\",namespace=\"%s\",pod=\"%s\"} %d\n",
				promEscape(c.name), promEscape(p.ns), promEscape(p.name), c.start.Unix())
		}
	}
	family("node_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the node in core-seconds")
	fmt.Fprintf(&b, "node_cpu_usage_seconds_total %g %d\n", float64(node.cpuNs)/1e9, ms(node.at))
	family("node_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the node in bytes")
	fmt.Fprintf(&b, "node_memory_working_set_bytes %d %d\n", node.workingSet, ms(node.at))
	family("pod_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds")
	for _, p := range pods {
		t := p.total()
		fmt.Fprintf(&b, "pod_cpu_usage_seconds_total{namespace=\"%s\",pod=\"%s\"} %g %d\n",
			promEscape(p.ns), promEscape(p.name), float64(t.cpuNs)/1e9, ms(t.at))
	}
	family("pod_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the pod in bytes")
	for _, p := range pods {
		t := p.total()
		fmt.Fprintf(&b, "pod_memory_working_set_bytes{namespace=\"%s\",pod=\"%s\"} %d %d\n",
			promEscape(p.ns), promEscape(p.name), t.workingSet, ms(t.at))
	}
	family("scrape_error", "gauge", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise")
	b.WriteString("scrape_error 0\n")
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write([]byte(b.String()))
}
