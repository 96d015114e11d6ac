package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flowmap/flowmap/internal/dockertest"
)

func testImage() *Image {
	return &Image{
		Name: "flowmap:test",
		Arch: "amd64",
		Files: []File{
			{Path: "/flowmap", Mode: 0o755, Body: []byte("not a binary")},
			{Path: "/etc/passwd", Mode: 0o644, Body: []byte("root:x:0:0::/:/sbin/nologin\n")},
		},
		Entrypoint: []string{"/flowmap"},
		User:       "65534:65534",
		Labels:     map[string]string{"org.opencontainers.image.title": "flowmap"},
		Created:    time.Unix(1700000000, 0).UTC(),
	}
}

// untar returns the regular files of a tar archive by name.
func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if h.Typeflag == tar.TypeReg {
			files[h.Name] = body
		} else {
			files[h.Name] = nil
		}
	}
}

func TestFullName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"flowmap:dev", "docker.io/library/flowmap:dev"},
		{"flowmap", "docker.io/library/flowmap:latest"},
		{"flowmap/flowmap:v1", "docker.io/flowmap/flowmap:v1"},
		{"ghcr.io/flowmap/flowmap:v1.2.3", "ghcr.io/flowmap/flowmap:v1.2.3"},
		{"localhost:5000/flowmap", "localhost:5000/flowmap:latest"},
	} {
		if got := FullName(tc.in); got != tc.want {
			t.Errorf("FullName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestArchive reads the archive back as both formats: the OCI layout's
// index, manifest and config, and the docker-archive manifest.json, which
// must name the same blobs; and the layer holds the files.
func TestArchive(t *testing.T) {
	var buf bytes.Buffer
	if err := testImage().WriteArchive(&buf); err != nil {
		t.Fatal(err)
	}
	files := untar(t, buf.Bytes())
	blob := func(d string) []byte {
		t.Helper()
		b, ok := files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]
		if !ok {
			t.Fatalf("no blob %s", d)
		}
		return b
	}
	var index struct {
		Manifests []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", files["index.json"], err)
	}
	if got, want := index.Manifests[0].Annotations["io.containerd.image.name"], "docker.io/library/flowmap:test"; got != want {
		t.Errorf("containerd name %q, want %q", got, want)
	}
	var manifest struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var config struct {
		Config struct {
			User       string
			Entrypoint []string
			Labels     map[string]string
		}
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "65534:65534" || config.Config.Labels["org.opencontainers.image.title"] != "flowmap" || config.Config.Entrypoint[0] != "/flowmap" {
		t.Errorf("config %+v, want user 65534, the title label and /flowmap", config.Config)
	}
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Errorf("diff ids %v, want [%s] (uncompressed layer)", config.RootFS.DiffIDs, manifest.Layers[0].Digest)
	}
	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &docker); err != nil || len(docker) != 1 {
		t.Fatalf("manifest.json %s: %v", files["manifest.json"], err)
	}
	if want := "blobs/sha256/" + strings.TrimPrefix(manifest.Config.Digest, "sha256:"); docker[0].Config != want {
		t.Errorf("docker config %s, want %s", docker[0].Config, want)
	}
	if len(docker[0].RepoTags) != 1 || docker[0].RepoTags[0] != "flowmap:test" {
		t.Errorf("docker tags %v, want [flowmap:test]", docker[0].RepoTags)
	}
	layer := untar(t, blob(manifest.Layers[0].Digest))
	for name, want := range map[string]string{"flowmap": "not a binary", "etc/passwd": "root:x:0:0::/:/sbin/nologin\n"} {
		if got, ok := layer[name]; !ok || string(got) != want {
			t.Errorf("layer %s = %q, want %q", name, got, want)
		}
	}
	if _, ok := layer["etc/"]; !ok {
		t.Errorf("layer has no etc/ directory: %v", layer)
	}
	var again bytes.Buffer
	if err := testImage().WriteArchive(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two archives of one image differ")
	}
}

// TestLoad loads the archive into a containerd (ctr images import) and a
// dockerd (docker load) of the test's own, and finds its labels there.
// The bridges are on 10.213.200.0/28, a private range only the test's own
// bridges use (internal/k8sbox has 10.213.0.0/16 but this).
// Needs root, containerd, docker.io.
func TestLoad(t *testing.T) {
	var buf bytes.Buffer
	if err := testImage().WriteArchive(&buf); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := dockertest.StartContainerdT(t, dockertest.Options{Prefix: "fmi", Subnet: netip.MustParsePrefix("10.213.200.0/29")})
	ctr := exec.Command("ctr", "--address", c.Socket, "-n", "k8s.io", "images", "import", "-")
	ctr.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := ctr.CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v: %s", err, out)
	}
	out, err := exec.Command("ctr", "--address", c.Socket, "-n", "k8s.io", "images", "ls", "-q").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "docker.io/library/flowmap:test\n") {
		t.Errorf("ctr images ls: %v: %s, want docker.io/library/flowmap:test", err, out)
	}
	d := dockertest.StartT(t, dockertest.Options{Prefix: "fmi", Subnet: netip.MustParsePrefix("10.213.200.8/29")})
	load := exec.Command("docker", "-H", "unix://"+d.Socket, "load")
	load.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("docker load: %v: %s", err, out)
	}
	got, err := d.Docker(ctx, "image", "inspect", "-f", `{{.Config.User}} {{index .Config.Labels "org.opencontainers.image.title"}}`, "flowmap:test")
	if want := "65534:65534 flowmap"; err != nil || strings.TrimSpace(got) != want {
		t.Errorf("docker image inspect: %v: %q, want %q", err, got, want)
	}
}
