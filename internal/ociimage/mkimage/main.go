// Command mkimage writes flowmap's container image, as a tar archive that
// `docker load` and `ctr images import` read, from a static flowmap binary:
//
//	CGO_ENABLED=0 go build -o bin/flowmap-static ./cmd/flowmap
//	go run ./internal/ociimage/mkimage -binary bin/flowmap-static -name flowmap:dev -o bin/flowmap-image.tar
//
// The image has no base and no shell: /flowmap, its entry point, and an
// /etc/passwd and /etc/group naming root and nobody. Its default user is
// nobody (65534), which is enough for `flowmap graph` and the other
// commands that read files or Prometheus; the agent needs capabilities
// that a non-root process only gets from file capabilities, which
// allowPrivilegeEscalation: false disables, so the DaemonSet runs it as
// uid 0 with every capability dropped but the ones it names (see
// deploy/kubernetes/daemonset.yaml). `make image` runs it.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/flowmap/flowmap/internal/ociimage"
)

func main() {
	binary := flag.String("binary", "bin/flowmap-static", "the static flowmap binary (CGO_ENABLED=0)")
	name := flag.String("name", "flowmap:dev", "the image reference: flowmap:dev, ghcr.io/flowmap/flowmap:v1.2.3")
	out := flag.String("o", "bin/flowmap-image.tar", "the archive to write")
	arch := flag.String("arch", runtime.GOARCH, "the binary's GOARCH")
	version := flag.String("version", "dev", "org.opencontainers.image.version")
	revision := flag.String("revision", "", "org.opencontainers.image.revision: the git commit")
	created := flag.Int64("created", 0, "the image's time, seconds since 1970 (the commit's time; SOURCE_DATE_EPOCH)")
	flag.Parse()
	if err := run(*binary, *name, *out, *arch, *version, *revision, *created); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(binary, name, out, arch, version, revision string, created int64) error {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return fmt.Errorf("read binary: %w", err)
	}
	if created == 0 {
		if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
			if created, err = strconv.ParseInt(s, 10, 64); err != nil {
				return fmt.Errorf("parse SOURCE_DATE_EPOCH: %w", err)
			}
		}
	}
	t := time.Unix(created, 0).UTC()
	labels := map[string]string{
		"org.opencontainers.image.title":       "flowmap",
		"org.opencontainers.image.description": "eBPF network flow and topology mapper",
		"org.opencontainers.image.source":      "https://github.com/flowmap/flowmap",
		"org.opencontainers.image.url":         "https://github.com/flowmap/flowmap",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.created":     t.Format(time.RFC3339),
	}
	if revision != "" {
		labels["org.opencontainers.image.revision"] = revision
	}
	im := &ociimage.Image{
		Name: name,
		Arch: arch,
		Files: []ociimage.File{
			{Path: "/flowmap", Mode: 0o755, Body: bin},
			{Path: "/etc/passwd", Mode: 0o644, Body: []byte("root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n")},
			{Path: "/etc/group", Mode: 0o644, Body: []byte("root:x:0:\nnogroup:x:65534:\n")},
			{Path: "/tmp", Mode: 0o1777, Dir: true},
		},
		Entrypoint: []string{"/flowmap"},
		User:       "65534:65534",
		Labels:     labels,
		Created:    t,
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create archive: %w", err)
	}
	w := bufio.NewWriter(f)
	if err := im.WriteArchive(w); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write archive: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	fmt.Printf("%s: %s (%s)\n", out, ociimage.FullName(name), version)
	return nil
}
