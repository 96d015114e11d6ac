package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certFiles serves a certificate and key from files, read again when
// either file's modification time or size changes: a renewed Secret (the
// kubelet swaps its files) is served from the next handshake on, without
// a restart or a timer.
type certFiles struct {
	cert, key string
	log       *slog.Logger

	mu     sync.Mutex
	stamp  [2]fileStamp // of the pair served
	failed [2]fileStamp // of the files that last failed to load
	pair   *tls.Certificate
}

type fileStamp struct {
	mtime time.Time
	size  int64
}

// newCertFiles loads the pair; it fails if they do not load.
func newCertFiles(cert, key string, log *slog.Logger) (*certFiles, error) {
	c := &certFiles{cert: cert, key: key, log: log}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// reload loads the pair again if a file changed. The caller holds c.mu,
// or is newCertFiles.
func (c *certFiles) reload() error {
	cs, err := stamp(c.cert)
	if err != nil {
		return fmt.Errorf("load tls certificate: %w", err)
	}
	ks, err := stamp(c.key)
	if err != nil {
		return fmt.Errorf("load tls key: %w", err)
	}
	now := [2]fileStamp{cs, ks}
	if c.pair != nil && (now == c.stamp || now == c.failed) {
		return nil // unchanged, or already reported
	}
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		c.failed = now
		return fmt.Errorf("load tls key pair %s, %s: %w", c.cert, c.key, err)
	}
	c.pair, c.stamp = &pair, now
	return nil
}

// GetCertificate is tls.Config's: the pair as the files hold it now, or,
// while they do not load (one written, the other not yet), the last that
// did.
func (c *certFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.reload(); err != nil {
		c.log.Warn("reload tls certificate, serving the last one", "err", err)
	}
	return c.pair, nil
}
