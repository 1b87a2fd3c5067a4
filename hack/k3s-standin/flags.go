package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Config is what `k3s server` was asked to do, after flag parsing and defaulting.
type Config struct {
	DataDir              string
	WriteKubeconfig      string
	WriteKubeconfigMode  os.FileMode
	ServiceCIDR          string
	TLSSANs              []string
	Disable              []string
	HTTPSListenPort      int
	BindAddress          string
	AdvertiseAddress     string
	DatastoreEndpoint    string // "" = SQLite in <data-dir>/server/db
	DatastoreCAFile      string
	DatastoreCertFile    string
	DatastoreKeyFile     string
	EgressSelectorMode   string
	FlannelBackend       string
	DisableNetworkPolicy bool
	DisableAgent         bool
	DisableScheduler     bool
	DisableCloudCtrl     bool
	DisableHelmCtrl      bool
	APIServerArgs        []string        // --kube-apiserver-arg, "key=value" each
	ControllerMgrArgs    []string        // --kube-controller-manager-arg, "key=value" each
	Token, AgentToken    string          // accepted, unused (there is no agent to join)
	set                  map[string]bool // flags given on the command line
}

type flagKind int

const (
	kindString flagKind = iota
	kindBool
	kindList     // repeatable; each value is also split at commas (k3s StringSlice)
	kindRepeated // repeatable; values kept whole (they contain commas themselves)
	kindInt
)

// flagDef is one accepted flag: its kind and where its value goes.
type flagDef struct {
	kind flagKind
	set  func(c *Config, v string) error
}

func stringFlag(dst func(*Config) *string) flagDef {
	return flagDef{kindString, func(c *Config, v string) error { *dst(c) = v; return nil }}
}

func boolFlag(dst func(*Config) *bool) flagDef {
	return flagDef{kindBool, func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("not a boolean: %q", v)
		}
		*dst(c) = b
		return nil
	}}
}

func listFlag(dst func(*Config) *[]string) flagDef {
	return flagDef{kindList, func(c *Config, v string) error {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				*dst(c) = append(*dst(c), s)
			}
		}
		return nil
	}}
}

func repeatedFlag(dst func(*Config) *[]string) flagDef {
	return flagDef{kindRepeated, func(c *Config, v string) error {
		if _, _, err := splitExtraArg(v); err != nil {
			return err
		}
		*dst(c) = append(*dst(c), v)
		return nil
	}}
}

// serverFlags lists every flag `k3s server` accepts here; anything else is an error.
var serverFlags = map[string]flagDef{
	"data-dir":                    stringFlag(func(c *Config) *string { return &c.DataDir }),
	"write-kubeconfig":            stringFlag(func(c *Config) *string { return &c.WriteKubeconfig }),
	"write-kubeconfig-mode":       {kindString, setWriteKubeconfigMode},
	"service-cidr":                stringFlag(func(c *Config) *string { return &c.ServiceCIDR }),
	"tls-san":                     listFlag(func(c *Config) *[]string { return &c.TLSSANs }),
	"disable":                     listFlag(func(c *Config) *[]string { return &c.Disable }),
	"https-listen-port":           {kindInt, setPort},
	"bind-address":                stringFlag(func(c *Config) *string { return &c.BindAddress }),
	"advertise-address":           stringFlag(func(c *Config) *string { return &c.AdvertiseAddress }),
	"datastore-endpoint":          stringFlag(func(c *Config) *string { return &c.DatastoreEndpoint }),
	"datastore-cafile":            stringFlag(func(c *Config) *string { return &c.DatastoreCAFile }),
	"datastore-certfile":          stringFlag(func(c *Config) *string { return &c.DatastoreCertFile }),
	"datastore-keyfile":           stringFlag(func(c *Config) *string { return &c.DatastoreKeyFile }),
	"egress-selector-mode":        stringFlag(func(c *Config) *string { return &c.EgressSelectorMode }),
	"flannel-backend":             stringFlag(func(c *Config) *string { return &c.FlannelBackend }),
	"disable-network-policy":      boolFlag(func(c *Config) *bool { return &c.DisableNetworkPolicy }),
	"disable-agent":               boolFlag(func(c *Config) *bool { return &c.DisableAgent }),
	"disable-scheduler":           boolFlag(func(c *Config) *bool { return &c.DisableScheduler }),
	"disable-cloud-controller":    boolFlag(func(c *Config) *bool { return &c.DisableCloudCtrl }),
	"disable-helm-controller":     boolFlag(func(c *Config) *bool { return &c.DisableHelmCtrl }),
	"kube-apiserver-arg":          repeatedFlag(func(c *Config) *[]string { return &c.APIServerArgs }),
	"kube-controller-manager-arg": repeatedFlag(func(c *Config) *[]string { return &c.ControllerMgrArgs }),
	"token":                       stringFlag(func(c *Config) *string { return &c.Token }),
	"agent-token":                 stringFlag(func(c *Config) *string { return &c.AgentToken }),
}

func setWriteKubeconfigMode(c *Config, v string) error {
	m, err := strconv.ParseUint(v, 8, 32)
	if err != nil || m > 0o777 {
		return fmt.Errorf("not an octal file mode: %q", v)
	}
	c.WriteKubeconfigMode = os.FileMode(m)
	return nil
}

func setPort(c *Config, v string) error {
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("not a TCP port: %q", v)
	}
	c.HTTPSListenPort = p
	return nil
}

// errHelp is returned for -h/--help.
var errHelp = errors.New("help requested")

// ParseServerFlags parses the arguments after `k3s server`. Flags take one or two leading
// dashes and their value as `--flag=value` or `--flag value`; booleans take no separate value
// (`--flag` or `--flag=false`).
func ParseServerFlags(args []string) (*Config, error) {
	c := &Config{set: map[string]bool{}}
	// k3s reads these flags from its environment too (flags given on the command line win):
	// manifests pass the datastore endpoint and token from a Secret without putting them in argv.
	args = append(envFlags(os.LookupEnv), args...)
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "-h" || arg == "--help" {
			return nil, errHelp
		}
		if !strings.HasPrefix(arg, "-") || arg == "-" || arg == "--" {
			return nil, fmt.Errorf("unexpected argument %q: `k3s server` takes flags only", arg)
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-"), "=")
		def, ok := serverFlags[name]
		if !ok {
			return nil, fmt.Errorf("unknown flag: --%s (`k3s server --help` lists the flags this stand-in accepts)", name)
		}
		if !hasValue {
			if def.kind == kindBool {
				value = "true"
			} else {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("flag --%s needs a value", name)
				}
				i++
				value = args[i]
			}
		}
		if err := def.set(c, value); err != nil {
			return nil, fmt.Errorf("flag --%s: %w", name, err)
		}
		c.set[name] = true
	}
	if err := c.defaults(); err != nil {
		return nil, err
	}
	return c, c.validate()
}

// flagEnv: the environment twins of k3s server flags this stand-in honours (k3s's own names).
var flagEnv = []struct{ env, flag string }{
	{"K3S_DATASTORE_ENDPOINT", "datastore-endpoint"},
	{"K3S_DATASTORE_CAFILE", "datastore-cafile"},
	{"K3S_DATASTORE_CERTFILE", "datastore-certfile"},
	{"K3S_DATASTORE_KEYFILE", "datastore-keyfile"},
	{"K3S_TOKEN", "token"},
}

// envFlags turns the set, non-empty twins into --flag=value arguments.
func envFlags(lookup func(string) (string, bool)) []string {
	var out []string
	for _, e := range flagEnv {
		if v, ok := lookup(e.env); ok && v != "" {
			out = append(out, "--"+e.flag+"="+v)
		}
	}
	return out
}

func knownFlags() string {
	names := make([]string, 0, len(serverFlags))
	for n := range serverFlags {
		names = append(names, "--"+n)
	}
	sortStrings(names)
	return strings.Join(names, " ")
}

// defaults fills in what k3s defaults, and makes the data dir absolute (kubeconfigs and the
// kine socket refer to it by absolute path).
func (c *Config) defaults() error {
	if !c.set["data-dir"] {
		c.DataDir = "/var/lib/rancher/k3s"
		if os.Geteuid() != 0 {
			if home, err := os.UserHomeDir(); err == nil {
				c.DataDir = filepath.Join(home, ".rancher", "k3s")
			}
		}
	}
	if c.DataDir == "" {
		return errors.New("flag --data-dir: empty")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("data dir %q: %w", c.DataDir, err)
	}
	c.DataDir = abs
	if !c.set["write-kubeconfig"] {
		c.WriteKubeconfig = "/etc/rancher/k3s/k3s.yaml"
		if os.Geteuid() != 0 {
			if home, err := os.UserHomeDir(); err == nil {
				c.WriteKubeconfig = filepath.Join(home, ".kube", "k3s.yaml")
			}
		}
	}
	if c.WriteKubeconfigMode == 0 {
		c.WriteKubeconfigMode = 0o600
	}
	if !c.set["service-cidr"] {
		c.ServiceCIDR = "10.43.0.0/16"
	}
	if c.HTTPSListenPort == 0 {
		c.HTTPSListenPort = 6443
	}
	if c.BindAddress == "" {
		c.BindAddress = "0.0.0.0"
	}
	return nil
}

func (c *Config) validate() error {
	if _, err := FirstServiceIPs(c.ServiceCIDR); err != nil {
		return fmt.Errorf("flag --service-cidr: %w", err)
	}
	if net.ParseIP(c.BindAddress) == nil {
		return fmt.Errorf("flag --bind-address: not an IP address: %q", c.BindAddress)
	}
	if c.AdvertiseAddress != "" && net.ParseIP(c.AdvertiseAddress) == nil {
		return fmt.Errorf("flag --advertise-address: not an IP address: %q", c.AdvertiseAddress)
	}
	switch c.EgressSelectorMode {
	case "", "disabled", "agent", "pod", "cluster":
	default:
		return fmt.Errorf("flag --egress-selector-mode: %q is none of disabled, agent, pod, cluster", c.EgressSelectorMode)
	}
	return nil
}

// FirstServiceIPs returns the first usable address (network address + 1) of each range in a
// comma-separated service CIDR list (one range, or two for dual stack): the `kubernetes`
// Service's ClusterIP, which the serving certificate must name.
func FirstServiceIPs(cidrs string) ([]net.IP, error) {
	var ips []net.IP
	for _, s := range strings.Split(cidrs, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil, fmt.Errorf("empty range in %q", cidrs)
		}
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("not a CIDR: %q", s)
		}
		ip := make(net.IP, len(n.IP))
		copy(ip, n.IP)
		for i := len(ip) - 1; i >= 0; i-- { // + 1, with carry
			ip[i]++
			if ip[i] != 0 {
				break
			}
		}
		if !n.Contains(ip) {
			return nil, fmt.Errorf("range %q has no address for the kubernetes Service", s)
		}
		ips = append(ips, ip)
	}
	return ips, nil
}
