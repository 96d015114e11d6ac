// Command flowmap maps network flows between containers, hosts and the
// outside from the kernel.
//
//	flowmap agent [flags]   run the daemon: count flows, serve them over HTTP
//	flowmap graph [flags]   fetch the graph from an agent, write it as JSON, DOT, SVG, PNG or a table
//	flowmap demo [flags]    run the agent on a sandbox shop with traffic, write its graph, serve its live map until interrupted
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: flowmap <command> [flags]

commands:
  agent   count flows on this host's interfaces and serve them over HTTP
  graph   fetch the graph from a running agent and write it as JSON, DOT,
          SVG, PNG or a table
  demo    build a sandbox shop of network namespaces, drive traffic, run the
          agent on it, write topology.json, .dot and .svg, print the edges
          and the live map's address; until Ctrl-C (--duration=30s: 30s)

Run 'flowmap <command> -h' for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "flowmap:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "agent":
		return runAgent(ctx, args[1:], stdout, stderr)
	case "graph":
		return runGraph(ctx, args[1:], stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
