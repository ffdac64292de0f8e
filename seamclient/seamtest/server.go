package seamtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"
)

// Server is a Fake listening on a loopback port, for one test or one run,
// as an httptest.Server is for a handler. The caller closes it.
type Server struct {
	*Fake
	// URL is the base URL to give seamclient.New, e.g. http://127.0.0.1:40123.
	URL string

	ts     *httptest.Server
	cancel context.CancelFunc
}

// NewServer starts a Fake on a loopback port. The caller closes it with
// Close, for example with defer s.Close() or t.Cleanup(s.Close).
func NewServer(opts ...Option) *Server {
	f := New(opts...)
	// Calls hanging in FaultTimeout or latency end when the server closes,
	// instead of holding Close for as long as the client waits.
	base, cancel := context.WithCancel(context.Background())
	ts := httptest.NewUnstartedServer(f)
	ts.Config.BaseContext = func(net.Listener) context.Context { return base }
	ts.Start()
	return &Server{Fake: f, URL: ts.URL, ts: ts, cancel: cancel}
}

// Client returns an *http.Client set up to reach the server.
func (s *Server) Client() *http.Client { return s.ts.Client() }

// Close stops the server, ending calls still held by faults or latency.
// It may be called more than once.
func (s *Server) Close() {
	s.cancel()
	s.ts.Close()
}

// Serve runs the fake as a stand-alone simulator: it listens on addr (for
// example 127.0.0.1:0) and serves until stop is called or ctx ends. url is
// the base URL to give seamclient.New. stop ends calls still held by
// faults or latency, then waits for the others within its context.
func (f *Fake) Serve(ctx context.Context, addr string) (url string, stop func(context.Context) error, err error) {
	return serveHandler(ctx, addr, f)
}

func serveHandler(ctx context.Context, addr string, h http.Handler) (url string, stop func(context.Context) error, err error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("seamtest: listen: %w", err)
	}
	base, cancel := context.WithCancel(context.Background())
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln) // always http.ErrServerClosed after Shutdown
	}()

	var (
		once    sync.Once
		stopErr error
	)
	shutdown := func(sctx context.Context) error {
		once.Do(func() {
			cancel()
			stopErr = srv.Shutdown(sctx)
			if stopErr != nil {
				_ = srv.Close()
			}
			<-served
		})
		return stopErr
	}
	unregister := context.AfterFunc(ctx, func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = shutdown(sctx)
	})
	stop = func(sctx context.Context) error {
		unregister()
		return shutdown(sctx)
	}
	return "http://" + ln.Addr().String(), stop, nil
}
