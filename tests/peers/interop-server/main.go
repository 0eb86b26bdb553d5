// Command interop-server is grpc-go's interop server (google.golang.org/grpc/interop/server at
// v1.85.0) listening on one given address instead of every interface, for the end-to-end tests
// (tests/app_protocols.rs) and bench/grpc-run.sh; scripts/peers.sh builds it.
//
// The upstream program takes only -port and listens on ":PORT", i.e. on every address of the
// machine. A Strait service's VIP port is its app's port, so the client sidecar must bind
// VIP:PORT on loopback next to the app: with the app on the wildcard that bind fails
// ("Address already in use"), and a call to VIP:PORT then reaches the app directly, past the
// mesh. Here the server binds -listen (e.g. 127.0.91.1:18680) and nothing else.
//
// Everything else is the upstream main: the same TestService implementation
// (interop.NewTestServer), the same ORCA per-call metrics interceptor and ORCA service, plain
// TCP (h2c). The one difference: the ORCA service keeps its default minimum reporting
// interval (upstream lowers it through an internal package a module outside grpc-go cannot
// import); the benchmark's unary calls do not use it.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/interop"
	"google.golang.org/grpc/orca"

	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

func main() {
	listen := flag.String("listen", "", "HOST:PORT to listen on (required; one address, not a wildcard)")
	flag.Parse()
	if *listen == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "interop-server: -listen HOST:PORT is required")
		flag.Usage()
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop-server:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "interop server listening on %v\n", lis.Addr())
	server := grpc.NewServer(orca.CallMetricsServerOption(nil))
	recorder := orca.NewServerMetricsRecorder()
	if err := orca.Register(server, orca.ServiceOptions{ServerMetricsProvider: recorder}); err != nil {
		fmt.Fprintln(os.Stderr, "interop-server: ORCA service:", err)
		os.Exit(1)
	}
	testgrpc.RegisterTestServiceServer(server, interop.NewTestServer(interop.NewTestServerOptions{MetricsRecorder: recorder}))
	if err := server.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "interop-server:", err)
		os.Exit(1)
	}
}
