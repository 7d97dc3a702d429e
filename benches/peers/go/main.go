// The Go net/http peer for gracering's benchmarks: a hello-world server with a graceful
// stop, built by benches/support/peers.rs (standard library only).
//
//	go run . -addr 127.0.0.1:0 -grace 25s
//
// Routes: `/` answers `Hello, World!`; `/slow?ms=N` sleeps N milliseconds, then
// answers `slow`; anything else is 404. Prints `listening on ADDR` once bound.
// SIGTERM or SIGINT calls Server.Shutdown with the grace period: it stops accepting,
// closes idle keep-alive connections and waits for requests in flight. Exit codes: 0
// after a clean stop, 3 when the grace period ran out, 1 when it could not start.
// The address may also come from PEER_ADDR (the flag wins).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	defAddr := os.Getenv("PEER_ADDR")
	if defAddr == "" {
		defAddr = "127.0.0.1:0"
	}
	addr := flag.String("addr", defAddr, "address to listen on")
	grace := flag.Duration("grace", 25*time.Second, "time allowed for the graceful stop")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "Hello, World!")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(w, "ms must be a whole number of milliseconds", http.StatusBadRequest)
			return
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "slow")
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-hello:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	// os.Stdout is unbuffered: the line leaves at once.
	fmt.Printf("go-hello: listening on %s\n", ln.Addr())

	select {
	case err := <-served:
		fmt.Fprintln(os.Stderr, "go-hello: serve:", err)
		os.Exit(1)
	case <-signals:
	}
	ctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintln(os.Stderr, "go-hello: grace period over, connections left")
			os.Exit(3)
		}
		fmt.Fprintln(os.Stderr, "go-hello: shutdown:", err)
		os.Exit(1)
	}
}
