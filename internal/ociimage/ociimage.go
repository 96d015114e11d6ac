// Package ociimage writes a single-layer container image as a tar archive
// that both `docker load` and `ctr images import` (and `podman load`) read,
// without a registry, a daemon or a Dockerfile: what `make image` builds
// flowmap's image with (see mkimage).
//
// The archive holds an OCI image layout (oci-layout, index.json and
// blobs/sha256/…) and, for Docker before 25, which reads only the
// docker-archive format, a manifest.json naming the same blobs: the
// layout Docker 25 and later write with `docker save`.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// File is a file, directory or symbolic link of the image's file system.
type File struct {
	Path     string // absolute: /flowmap
	Mode     int64  // permission bits
	Dir      bool
	Linkname string // a symbolic link to it if set
	Body     []byte
}

// Image is an image of one layer.
type Image struct {
	// Name is the reference it is loaded as: flowmap:dev,
	// ghcr.io/flowmap/flowmap:v1.2.3.
	Name       string
	Arch       string // GOARCH: amd64, arm64
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
	// User is the default user, "65534:65534"; a pod's securityContext
	// overrides it.
	User   string
	Labels map[string]string
	// Created is the image's and its files' time: the source's commit
	// time, so that one source builds one image.
	Created time.Time
}

// FullName returns the reference as containerd names it: flowmap:dev is
// docker.io/library/flowmap:dev, as the kubelet asks for it.
func FullName(ref string) string {
	name, tag := ref, "latest"
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		name, tag = ref[:i], ref[i+1:]
	}
	first, _, more := strings.Cut(name, "/")
	switch {
	case !more:
		name = "docker.io/library/" + name
	case !strings.ContainsAny(first, ".:") && first != "localhost":
		name = "docker.io/" + name
	}
	return name + ":" + tag
}

func digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

// layer returns the uncompressed tar of the image's files, parents made
// for every file, sorted by path.
func (im *Image) layer() ([]byte, error) {
	files := map[string]File{}
	for _, f := range im.Files {
		p := path.Clean("/" + f.Path)
		if p == "/" {
			return nil, fmt.Errorf("image file %q: not a file", f.Path)
		}
		if _, dup := files[p]; dup {
			return nil, fmt.Errorf("image file %s: given twice", p)
		}
		f.Path = p
		files[p] = f
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := files[d]; !ok {
				files[d] = File{Path: d, Dir: true, Mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := files[p]
		h := &tar.Header{Name: p[1:], Mode: f.Mode, ModTime: im.Created, Format: tar.FormatPAX}
		switch {
		case f.Dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case f.Linkname != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Linkname
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
		if _, err := tw.Write(f.Body); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteArchive writes the image as a tar archive to w.
func (im *Image) WriteArchive(w io.Writer) error {
	if im.Name == "" || im.Arch == "" {
		return fmt.Errorf("write image: a name and an architecture are needed")
	}
	layer, err := im.layer()
	if err != nil {
		return err
	}
	created := im.Created.UTC().Format(time.RFC3339)
	config, err := json.Marshal(map[string]any{
		"created":      created,
		"architecture": im.Arch,
		"os":           "linux",
		"config": map[string]any{
			"User":       im.User,
			"Entrypoint": im.Entrypoint,
			"Cmd":        im.Cmd,
			"Env":        im.Env,
			"Labels":     im.Labels,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{digest(layer)}},
		"history": []any{map[string]any{"created": created, "created_by": "flowmap make image"}},
	})
	if err != nil {
		return fmt.Errorf("make image config: %w", err)
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": len(layer)}},
		"annotations":   im.Labels,
	})
	if err != nil {
		return fmt.Errorf("make image manifest: %w", err)
	}
	full := FullName(im.Name)
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
			"platform":    map[string]string{"architecture": im.Arch, "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": full, "org.opencontainers.image.ref.name": full[strings.LastIndexByte(full, ':')+1:]},
		}},
	})
	if err != nil {
		return fmt.Errorf("make image index: %w", err)
	}
	blob := func(d string) string { return "blobs/sha256/" + strings.TrimPrefix(d, "sha256:") }
	// docker-archive: Docker before 25 reads only this.
	dockerManifest, err := json.Marshal([]any{map[string]any{
		"Config":   blob(digest(config)),
		"RepoTags": []string{strings.TrimPrefix(strings.TrimPrefix(full, "docker.io/library/"), "docker.io/")},
		"Layers":   []string{blob(digest(layer))},
	}})
	if err != nil {
		return fmt.Errorf("make docker manifest: %w", err)
	}
	tw := tar.NewWriter(w)
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: im.Created}); err != nil {
			return fmt.Errorf("write image archive: %w", err)
		}
	}
	for _, f := range []struct {
		name string
		body []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"manifest.json", dockerManifest},
		{blob(digest(layer)), layer},
		{blob(digest(config)), config},
		{blob(digest(manifest)), manifest},
	} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: im.Created}); err != nil {
			return fmt.Errorf("write image archive: %w", err)
		}
		if _, err := tw.Write(f.body); err != nil {
			return fmt.Errorf("write image archive: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	return nil
}
