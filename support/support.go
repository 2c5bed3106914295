// Package support writes the archive an SRE attaches to a ticket: one tar.gz
// of files gathered from the node, every one passed through a Redactor so that
// no secret (bootstrap tokens, gossip keys, private keys, AWS credentials)
// leaves the node.
package support

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nodeagent/nodeagent/internal/lazyre"
)

// Redacted replaces every secret.
const Redacted = "<redacted>"

// Redactor removes secrets from text: the values it was given (and their
// base64 forms), PEM private keys, bootstrap tokens, and the values of keys
// that name secrets (client-key-data, token, AWS_SECRET_ACCESS_KEY, ...).
type Redactor struct {
	literals [][]byte
}

// minSecret: shorter "secrets" would redact ordinary words.
const minSecret = 8

// NewRedactor redacts the given secret values wherever they appear.
func NewRedactor(secrets ...[]byte) *Redactor {
	r := &Redactor{}
	for _, s := range secrets {
		s = bytes.TrimSpace(s)
		if len(s) < minSecret {
			continue
		}
		r.literals = append(r.literals, s,
			[]byte(base64.StdEncoding.EncodeToString(s)), []byte(base64.RawStdEncoding.EncodeToString(s)))
	}
	// Longest first, so a secret containing another is removed whole.
	slices.SortFunc(r.literals, func(a, b []byte) int { return len(b) - len(a) })
	return r
}

var (
	pemPrivateKey = lazyre.New(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----`)
	// A kubeadm-style bootstrap token: [a-z0-9]{6}.[a-z0-9]{16}.
	bootstrapToken = lazyre.New(`\b[a-z0-9]{6}\.[a-z0-9]{16}\b`)
	// key: value, key=value and "key": "value" where the key names a secret.
	secretField = lazyre.New(`(?i)("?(?:[a-z0-9_-]*(?:client-key-data|private[_-]?key|secret[_-]?access[_-]?key|session[_-]?token|bootstrap[_-]?token|password|token))"?\s*[:=]\s*)("[^"\n]*"|'[^'\n]*'|[^\s,}]+)`)
	// AWS access key IDs.
	accessKeyID = lazyre.New(`\b(?:AKIA|ASIA)[A-Z0-9]{16}\b`)
)

// Redact returns b without secrets.
func (r *Redactor) Redact(b []byte) []byte {
	for _, l := range r.literals {
		b = bytes.ReplaceAll(b, l, []byte(Redacted))
	}
	b = pemPrivateKey().ReplaceAll(b, []byte("-----BEGIN PRIVATE KEY-----\n"+Redacted+"\n-----END PRIVATE KEY-----"))
	b = secretField().ReplaceAllFunc(b, func(m []byte) []byte {
		sub := secretField().FindSubmatch(m)
		if v := strings.Trim(string(sub[2]), `"'`); v == "" || v == Redacted || strings.HasPrefix(v, "/") {
			return m // empty, done already, or a path to the secret, which is no secret
		}
		return append(append([]byte{}, sub[1]...), []byte(`"`+Redacted+`"`)...)
	})
	b = bootstrapToken().ReplaceAll(b, []byte(Redacted))
	b = accessKeyID().ReplaceAll(b, []byte(Redacted))
	return b
}

// Archive is a support archive being written.
type Archive struct {
	gz    *gzip.Writer
	tw    *tar.Writer
	r     *Redactor
	now   time.Time
	names []string
	notes []string
}

// NewArchive starts an archive on w whose files are redacted by r.
func NewArchive(w io.Writer, r *Redactor, now time.Time) *Archive {
	gz := gzip.NewWriter(w)
	return &Archive{gz: gz, tw: tar.NewWriter(gz), r: r, now: now}
}

// Add writes one file, redacted.
func (a *Archive) Add(name string, data []byte) error {
	data = a.r.Redact(data)
	hdr := &tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), ModTime: a.now, Typeflag: tar.TypeReg}
	if err := a.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("support archive: %s: %w", name, err)
	}
	if _, err := a.tw.Write(data); err != nil {
		return fmt.Errorf("support archive: %s: %w", name, err)
	}
	a.names = append(a.names, name)
	return nil
}

// Note records something that could not be gathered, and why; the notes go
// into the archive's README.txt.
func (a *Archive) Note(format string, args ...any) {
	a.notes = append(a.notes, strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " "))
}

// Close writes README.txt (what is in the archive, what is missing) and ends it.
func (a *Archive) Close() error {
	var b strings.Builder
	fmt.Fprintf(&b, "nodeagent support archive, %s\nSecrets (bootstrap tokens, gossip keys, private keys, AWS credentials) are replaced by %s.\n\nFiles:\n", a.now.UTC().Format(time.RFC3339), Redacted)
	for _, n := range a.names {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	if len(a.notes) > 0 {
		b.WriteString("\nNot gathered:\n")
		for _, n := range a.notes {
			fmt.Fprintf(&b, "  %s\n", n)
		}
	}
	if err := a.Add("README.txt", []byte(b.String())); err != nil {
		return err
	}
	if err := a.tw.Close(); err != nil {
		return fmt.Errorf("support archive: %w", err)
	}
	if err := a.gz.Close(); err != nil {
		return fmt.Errorf("support archive: %w", err)
	}
	return nil
}

// ManagedBlock returns the part of an /etc/hosts file between begin and end
// markers (both included), or nil.
func ManagedBlock(hosts []byte, begin, end string) []byte {
	s := string(hosts)
	i := strings.Index(s, begin)
	if i < 0 {
		return nil
	}
	j := strings.Index(s[i:], end)
	if j < 0 {
		return []byte(s[i:])
	}
	return []byte(s[i : i+j+len(end)+1])
}
