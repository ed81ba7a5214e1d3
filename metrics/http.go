package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Check is one readiness condition: nil when it holds, else why not.
type Check struct {
	Name string
	Func func() error
}

// Handler serves
//
//	/metrics  the metrics, in the Prometheus text format
//	/healthz  200 while the process serves HTTP at all (liveness)
//	/readyz   200 when every check holds, else 503 naming the failed ones
//	          (readiness: a load balancer sends new sessions only here)
//
// and any extra handlers given by path (the log level, for one).
func (m *Metrics) Handler(checks []Check, extra map[string]http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		var failed []string
		for _, c := range checks {
			if err := c.Func(); err != nil {
				failed = append(failed, c.Name+": "+err.Error())
			}
		}
		if len(failed) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, f := range failed {
				fmt.Fprintln(w, f)
			}
			return
		}
		fmt.Fprintln(w, "ready")
	})
	for path, h := range extra {
		mux.Handle(path, h)
	}
	return mux
}

// shutdownTimeout bounds the HTTP server's shutdown.
const shutdownTimeout = 5 * time.Second

// Listen opens the metrics listener on addr ("IP:PORT" or ":PORT").
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	return ln, nil
}

// Serve serves h on ln until ctx ends, then shuts the HTTP server down
// (bounded) and returns. ln is closed.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *zap.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(log)}
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(done)
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		srv.Shutdown(sctx)
	})
	log.Info("metrics listening", zap.Stringer("addr", ln.Addr()))
	err := srv.Serve(ln)
	if stop() { // Serve failed on its own
		return fmt.Errorf("metrics: %w", err)
	}
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
