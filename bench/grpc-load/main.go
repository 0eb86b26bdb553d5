// Command grpc-load is an open-loop, fixed-rate gRPC load generator for Strait's latency
// benchmarks: it starts unary calls at a fixed rate whatever the answers do, and reports the
// latency of each call in JSON.
//
// It calls grpc.testing.TestService/UnaryCall, which grpc-go's interop server (the real peer
// the benchmarks put behind a sidecar) serves. Calls are started on a schedule (call i at
// start + i/rate) rather than when the previous one returns, so a slow answer cannot lower the
// offered load ("coordinated omission"): latency_ms counts from the scheduled start, which
// includes any wait for the scheduler; service_ms counts from the moment the call was actually
// made. A call that cannot start because -max-inflight calls are already waiting is not made
// and is counted under "dropped" (the run then fails, as a bounded but honest overload).
//
// Exit status: 0 when every scheduled call was made and answered OK (or -allow-errors), 1
// otherwise, 2 on bad flags or when the target cannot be reached at all.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

type config struct {
	target       string
	authority    string
	rate         float64
	duration     time.Duration
	warmup       time.Duration
	timeout      time.Duration
	requestSize  int
	responseSize int
	maxInflight  int
	allowErrors  bool
}

type result struct {
	code    string
	latency time.Duration // from the scheduled start
	service time.Duration // from the actual start
}

type percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type report struct {
	Target       string         `json:"target"`
	Rate         float64        `json:"rate"`
	DurationS    float64        `json:"duration_s"`
	RequestSize  int            `json:"request_size"`
	ResponseSize int            `json:"response_size"`
	Scheduled    int            `json:"scheduled"`
	Dropped      int            `json:"dropped"`
	Calls        int            `json:"calls"`
	OK           int            `json:"ok"`
	Errors       map[string]int `json:"errors"`
	AchievedRate float64        `json:"achieved_rate"`
	LatencyMs    percentiles    `json:"latency_ms"`
	ServiceMs    percentiles    `json:"service_ms"`
}

func main() {
	var c config
	flag.StringVar(&c.target, "target", "", "HOST:PORT of a grpc.testing.TestService server (required)")
	flag.StringVar(&c.authority, "authority", "", ":authority to send (default: -target)")
	flag.Float64Var(&c.rate, "rate", 1000, "calls started per second")
	flag.DurationVar(&c.duration, "duration", 10*time.Second, "how long to start calls")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "calls at -rate before measuring (not reported)")
	flag.DurationVar(&c.timeout, "timeout", 5*time.Second, "deadline of each call")
	flag.IntVar(&c.requestSize, "request-size", 0, "request payload bytes")
	flag.IntVar(&c.responseSize, "response-size", 0, "response payload bytes asked for")
	flag.IntVar(&c.maxInflight, "max-inflight", 10000, "calls waiting at once; past it a call is dropped")
	flag.BoolVar(&c.allowErrors, "allow-errors", false, "exit 0 even when calls failed or were dropped")
	flag.Parse()
	if c.target == "" || c.rate <= 0 || c.duration <= 0 || c.warmup < 0 || c.maxInflight <= 0 ||
		c.requestSize < 0 || c.responseSize < 0 || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "grpc-load: -target is required; -rate, -duration, -max-inflight must be positive")
		flag.Usage()
		os.Exit(2)
	}
	rep, err := run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpc-load:", err)
		os.Exit(2)
	}
	out, _ := json.Marshal(rep)
	fmt.Println(string(out))
	if !c.allowErrors && (rep.Dropped > 0 || rep.OK != rep.Scheduled) {
		os.Exit(1)
	}
}

func run(c config) (*report, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy()}
	if c.authority != "" {
		opts = append(opts, grpc.WithAuthority(c.authority))
	}
	conn, err := grpc.NewClient(c.target, opts...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)
	req := &testgrpc.SimpleRequest{
		ResponseSize: int32(c.responseSize),
		Payload:      &testgrpc.Payload{Body: make([]byte, c.requestSize)},
	}
	// One call first, so connecting is not measured and an unreachable target fails at once.
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	_, err = client.UnaryCall(ctx, req, grpc.WaitForReady(true))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("first call to %s: %w", c.target, err)
	}
	if c.warmup > 0 {
		schedule(client, req, c, c.warmup)
	}
	results, dropped, elapsed := schedule(client, req, c, c.duration)

	rep := &report{
		Target: c.target, Rate: c.rate, DurationS: c.duration.Seconds(),
		RequestSize: c.requestSize, ResponseSize: c.responseSize,
		Scheduled: len(results) + dropped, Dropped: dropped, Calls: len(results),
		Errors: map[string]int{},
	}
	var latency, service []time.Duration
	for _, r := range results {
		if r.code == "OK" {
			rep.OK++
			latency = append(latency, r.latency)
			service = append(service, r.service)
		} else {
			rep.Errors[r.code]++
		}
	}
	rep.AchievedRate = float64(len(results)) / elapsed.Seconds()
	rep.LatencyMs = summarize(latency)
	rep.ServiceMs = summarize(service)
	return rep, nil
}

// schedule starts a call at every multiple of 1/rate for the duration and waits for them all.
// It returns each made call's result, how many were dropped, and how long starting them took.
func schedule(client testgrpc.TestServiceClient, req *testgrpc.SimpleRequest, c config, d time.Duration) ([]result, int, time.Duration) {
	n := int(c.rate * d.Seconds())
	interval := time.Duration(float64(time.Second) / c.rate)
	results := make([]result, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	inflight := make(chan struct{}, c.maxInflight)
	dropped := 0
	start := time.Now()
	for i := range n {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		select {
		case inflight <- struct{}{}:
		default:
			dropped++
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			_, err := client.UnaryCall(ctx, req)
			done := time.Now()
			cancel()
			<-inflight
			r := result{code: status.Code(err).String(), latency: done.Sub(due), service: done.Sub(began)}
			mu.Lock()
			results = append(results, r)
			mu.Unlock()
		}()
	}
	elapsed := time.Since(start)
	wg.Wait()
	return results, dropped, elapsed
}

func summarize(ds []time.Duration) percentiles {
	if len(ds) == 0 {
		return percentiles{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	at := func(q float64) float64 {
		// Nearest rank: the smallest value with at least q of the samples at or below it.
		i := int(q*float64(len(ds))+0.999999) - 1
		i = max(0, min(i, len(ds)-1))
		return ms(ds[i])
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return percentiles{
		P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: ms(ds[len(ds)-1]),
		Mean: ms(sum / time.Duration(len(ds))),
	}
}
