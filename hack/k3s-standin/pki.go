package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 10 * 365 * 24 * time.Hour
	// A leaf that expires sooner than this is reissued at start (k3s renews at 90 days too).
	renewBefore = 90 * 24 * time.Hour
)

// CA is a loaded or freshly made certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// LeafSpec describes one certificate signed by a CA: what it must contain to be reused.
type LeafSpec struct {
	Name     string // file prefix in server/tls: <Name>.crt, <Name>.key
	CN       string
	Orgs     []string
	Usage    x509.ExtKeyUsage
	DNSNames []string
	IPs      []net.IP
}

// Logf reports what the PKI code decided (created, reused, reissued and why).
type Logf func(format string, args ...any)

// EnsureCA loads DIR/NAME.{crt,key}, or creates both when neither exists. Half a CA (one file
// missing) or a key that does not match is an error: replacing a CA silently would cut off
// every client that trusts it.
func EnsureCA(dir, name, cn string, logf Logf) (*CA, error) {
	crtPath, keyPath := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	crtOK, keyOK := exists(crtPath), exists(keyPath)
	if crtOK && keyOK {
		ca, err := loadPair(crtPath, keyPath)
		if err != nil {
			return nil, fmt.Errorf("CA %s: %w", name, err)
		}
		if !ca.Cert.IsCA {
			return nil, fmt.Errorf("CA %s: %s is not a CA certificate", name, crtPath)
		}
		return ca, nil
	}
	if crtOK != keyOK {
		return nil, fmt.Errorf("CA %s: only one of %s and %s exists; refusing to replace the CA (remove both to start over)", name, crtPath, keyPath)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA %s: generating key: %w", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("CA %s: signing: %w", name, err)
	}
	if err := writePair(crtPath, keyPath, der, key); err != nil {
		return nil, fmt.Errorf("CA %s: %w", name, err)
	}
	cert, _ := x509.ParseCertificate(der)
	logf("created CA %s (%s)", name, cn)
	return &CA{Cert: cert, Key: key}, nil
}

// EnsureLeaf keeps DIR/<spec.Name>.{crt,key} when they still fit spec (same subject, usage and
// SANs, signed by ca, not about to expire, key matching) and issues a new pair otherwise.
func EnsureLeaf(dir string, ca *CA, spec LeafSpec, logf Logf) error {
	crtPath, keyPath := filepath.Join(dir, spec.Name+".crt"), filepath.Join(dir, spec.Name+".key")
	reason := "created"
	if exists(crtPath) || exists(keyPath) {
		existing, err := loadPair(crtPath, keyPath)
		if err == nil {
			reason = leafMismatch(existing.Cert, ca, spec)
			if reason == "" {
				return nil
			}
		} else {
			reason = "unusable (" + err.Error() + ")"
		}
		reason = "reissued: " + reason
	}
	if err := issueLeaf(crtPath, keyPath, ca, spec); err != nil {
		return fmt.Errorf("certificate %s: %w", spec.Name, err)
	}
	logf("certificate %s %s", spec.Name, reason)
	return nil
}

// leafMismatch says why cert no longer fits spec, or "" when it does.
func leafMismatch(cert *x509.Certificate, ca *CA, spec LeafSpec) string {
	switch {
	case cert.CheckSignatureFrom(ca.Cert) != nil:
		return "not signed by the current CA"
	case time.Until(cert.NotAfter) < renewBefore:
		return "expires " + cert.NotAfter.Format(time.RFC3339)
	case cert.Subject.CommonName != spec.CN || !sameSet(cert.Subject.Organization, spec.Orgs):
		return "subject changed"
	case !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{spec.Usage}):
		return "key usage changed"
	case !sameSet(cert.DNSNames, spec.DNSNames) || !sameSet(ipStrings(cert.IPAddresses), ipStrings(spec.IPs)):
		return "SANs changed"
	}
	return ""
}

func issueLeaf(crtPath, keyPath string, ca *CA, spec LeafSpec) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: spec.CN, Organization: spec.Orgs},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(leafValidity),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{spec.Usage},
		DNSNames:              spec.DNSNames,
		IPAddresses:           spec.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	return writePair(crtPath, keyPath, der, key)
}

// EnsureRSAKey keeps path when it holds a private key, and writes a new RSA 2048 key (PKCS#1,
// as k3s's service.key) otherwise. kube-apiserver reads the public half from the same file.
func EnsureRSAKey(path string, logf Logf) error {
	if exists(path) {
		if _, err := readKey(path); err != nil {
			return fmt.Errorf("%s: %w (remove it to get a new one)", path, err)
		}
		return nil
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("%s: generating RSA key: %w", path, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return err
	}
	logf("created service account key %s", filepath.Base(path))
	return nil
}

// CopyIfMissing writes dst with src's bytes unless dst exists.
func CopyIfMissing(src, dst string, mode fs.FileMode) error {
	if exists(dst) {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, data, mode)
}

func loadPair(crtPath, keyPath string) (*CA, error) {
	data, err := os.ReadFile(crtPath)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", crtPath)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", crtPath, err)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, err
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s", keyPath, crtPath)
	}
	return &CA{Cert: cert, Key: key}, nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: unexpected PEM block %q", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: unsupported key type %T", path, key)
	}
	return signer, nil
}

// writePair writes the key first and the certificate second, each atomically: a crash in
// between leaves a pair that does not match, which the next start detects and reissues.
func writePair(crtPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key: %w", err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeFileAtomic writes a temp file next to path and renames it over path, so readers (the
// syncer shares the data dir) never see half a file.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// writeFileIfChanged is writeFileAtomic that leaves an identical file alone (no mtime change,
// so watchers of the data dir see nothing happen on a restart).
func writeFileIfChanged(path string, data []byte, mode fs.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return os.Chmod(path, mode)
	}
	return writeFileAtomic(path, data, mode)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil { // crypto/rand does not fail on Linux; keep a valid serial anyway
		return big.NewInt(time.Now().UnixNano())
	}
	return n.Add(n, big.NewInt(1))
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func ipStrings(ips []net.IP) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}

// splitSANs sorts --tls-san values into IP addresses and DNS names.
func splitSANs(sans []string) (dns []string, ips []net.IP) {
	for _, s := range sans {
		s = strings.TrimSpace(s)
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		} else if s != "" {
			dns = append(dns, s)
		}
	}
	return dns, ips
}
