package dockertest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"testing"

	"github.com/flowmap/flowmap/internal/testenv"
)

func readTar(t *testing.T, b []byte) map[string]*tar.Header {
	t.Helper()
	files := make(map[string]*tar.Header)
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("read archive: %v", err)
		}
		files[h.Name] = h
	}
}

func TestBusyboxRootFS(t *testing.T) {
	testenv.MustHaveCommand(t, "busybox")
	b, err := BusyboxRootFS()
	if err != nil {
		t.Fatal(err)
	}
	files := readTar(t, b)
	for name, link := range map[string]string{"bin/busybox": "", "bin/sh": "busybox", "bin/httpd": "busybox", "bin/wget": "busybox", "www/index.html": ""} {
		h, ok := files[name]
		if !ok {
			t.Errorf("rootfs has no %s", name)
			continue
		}
		if h.Linkname != link {
			t.Errorf("rootfs %s links to %q, want %q", name, h.Linkname, link)
		}
	}
}

func TestOCIArchive(t *testing.T) {
	testenv.MustHaveCommand(t, "busybox")
	b, err := OCIArchive("docker.io/library/fme-test:1", []string{"/bin/sleep", "1"})
	if err != nil {
		t.Fatal(err)
	}
	blobs := make(map[string][]byte)
	var index []byte
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		switch {
		case h.Name == "index.json":
			index = body
		case h.Typeflag == tar.TypeReg && len(h.Name) > len("blobs/sha256/"):
			blobs[h.Name[len("blobs/sha256/"):]] = body
		}
	}
	for digest, body := range blobs {
		if got := fmt.Sprintf("%x", sha256.Sum256(body)); got != digest {
			t.Errorf("blob %s has digest %s", digest, got)
		}
	}
	var idx struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal(index, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json %s: %v, want one manifest", index, err)
	}
	m := idx.Manifests[0]
	if _, ok := blobs[m.Digest[len("sha256:"):]]; !ok {
		t.Errorf("index names manifest %s, which is not in the archive", m.Digest)
	}
	if got := m.Annotations["io.containerd.image.name"]; got != "docker.io/library/fme-test:1" {
		t.Errorf("image name annotation = %q, want %q", got, "docker.io/library/fme-test:1")
	}
}
