// Command fmtool is the cluster tests' workload: a TCP server that counts
// what each client sends, and a client that sends an exact number of
// bytes. Built static into the image fmk8s-tool:1; a test runs its client
// with kubectl exec.
//
//	fmtool serve [-listen :8080] [-reply 10000]
//	fmtool send -to 10.213.0.12:8080 -bytes 1000000 [-conns 1] [-rate 0]
//	fmtool dial -to 10.213.1.20:80 [-n 1] [-timeout 2s]
//
// serve prints "recv <client address> <bytes>" for each connection once
// the client has closed its side, then answers -reply bytes. send prints
// "sent <bytes> recv <bytes> retrans <bytes> local <address>" per
// connection (retrans: the payload its socket sent again, from TCP_INFO,
// on the wire besides what was sent), and fails unless the server answered
// in full. -rate paces each connection's bytes at that many a second.
// dial makes n connection attempts, one after the other, and prints each
// one's outcome: "ok", "refused" or "timeout" (or the error).
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fmtool serve|send [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "send":
		err = send(os.Args[2:])
	case "dial":
		err = dialN(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fmtool:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address to listen on")
	reply := fs.Int("reply", 10000, "bytes to answer each connection")
	fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() {
		// The kubelet stops a pod with SIGTERM.
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		os.Exit(0)
	}()
	out := bufio.NewWriter(os.Stdout)
	lines := make(chan string)
	go func() {
		for l := range lines {
			out.WriteString(l)
			out.Flush()
		}
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			n, err := io.Copy(io.Discard, c)
			if err != nil {
				lines <- fmt.Sprintf("error %s %v\n", c.RemoteAddr(), err)
				return
			}
			lines <- fmt.Sprintf("recv %s %d\n", c.RemoteAddr(), n)
			c.Write(make([]byte, *reply))
		}()
	}
}

func send(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	to := fs.String("to", "", "server address")
	bytes := fs.Int64("bytes", 0, "bytes to send each connection")
	conns := fs.Int("conns", 1, "connections, one after the other")
	reply := fs.Int64("reply", 10000, "bytes the server answers")
	rate := fs.Int64("rate", 0, "bytes a second to send at; 0: as fast as the connection takes them")
	fs.Parse(args)
	buf := make([]byte, 64<<10)
	for i := 0; i < *conns; i++ {
		c, err := dial(*to)
		if err != nil {
			return err
		}
		var src io.Reader = zeros{buf}
		if *rate > 0 {
			src = &paced{r: zeros{buf}, rate: *rate, start: time.Now()}
		}
		n, err := io.CopyN(c, src, *bytes)
		if err != nil {
			c.Close()
			return fmt.Errorf("send to %s: %w", *to, err)
		}
		tc := c.(*net.TCPConn)
		tc.CloseWrite()
		m, err := io.Copy(io.Discard, c)
		if err != nil {
			c.Close()
			return fmt.Errorf("read from %s: %w", *to, err)
		}
		retrans, err := retransmitted(tc)
		c.Close()
		if err != nil {
			return err
		}
		if m != *reply {
			return fmt.Errorf("%s answered %d bytes, want %d", *to, m, *reply)
		}
		fmt.Printf("sent %d recv %d retrans %d local %s\n", n, m, retrans, c.LocalAddr())
	}
	return nil
}

// retransmitted returns the bytes c's socket sent again.
func retransmitted(c *net.TCPConn) (uint64, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var gerr error
	if err := raw.Control(func(fd uintptr) { info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return 0, err
	}
	if gerr != nil {
		return 0, fmt.Errorf("tcp_info: %w", gerr)
	}
	return info.Bytes_retrans, nil
}

// dial connects to addr, again while it is refused (the server is
// starting), for up to 10 s.
func dial(addr string) (net.Conn, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{ buf []byte }

func (z zeros) Read(p []byte) (int, error) {
	if len(p) > len(z.buf) {
		p = p[:len(z.buf)]
	}
	return copy(p, z.buf), nil
}

// paced reads r at rate bytes a second, from start: each read waits until
// the bytes it returns are due.
type paced struct {
	r     io.Reader
	rate  int64
	start time.Time
	n     int64
}

func (p *paced) Read(b []byte) (int, error) {
	if max := p.rate / 50; int64(len(b)) > max && max > 0 {
		b = b[:max] // 20 ms of bytes at most
	}
	due := p.start.Add(time.Duration(float64(p.n+int64(len(b))) / float64(p.rate) * float64(time.Second)))
	time.Sleep(time.Until(due))
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

func dialN(args []string) error {
	fs := flag.NewFlagSet("dial", flag.ExitOnError)
	to := fs.String("to", "", "server address")
	n := fs.Int("n", 1, "attempts, one after the other")
	timeout := fs.Duration("timeout", 2*time.Second, "how long each attempt waits")
	fs.Parse(args)
	for i := 0; i < *n; i++ {
		c, err := net.DialTimeout("tcp", *to, *timeout)
		var ne net.Error
		switch {
		case err == nil:
			c.Close()
			fmt.Println("ok")
		case errors.Is(err, syscall.ECONNREFUSED):
			fmt.Println("refused")
		case errors.As(err, &ne) && ne.Timeout():
			fmt.Println("timeout")
		default:
			fmt.Println("error", err)
		}
	}
	return nil
}
