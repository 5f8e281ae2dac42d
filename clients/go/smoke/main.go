// Command smoke calls a running tiercache server through the Go code generated from
// proto/tiercache/v1 (clients/buf.gen.go.local.yaml) and checks every answer: Set, Get, a Get
// of a missing key, GetOrSet on a cold key (a lease), Fill, and GetOrSet again (the filled
// value). It exits non-zero on the first mismatch. scripts/check-clients.sh builds and runs it.
//
//	smoke 127.0.0.1:50051
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	tiercachev1 "example.com/myservice/gen/tiercache/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

const namespace = "smoke"

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: smoke HOST:PORT")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "go smoke: FAILED:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Debian's grpc-go (1.33) predates credentials/insecure; WithInsecure is its plaintext option.
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	cache := tiercachev1.NewCacheServiceClient(conn)
	calls := 0

	// Set, then Get the same entry back.
	value := []byte("hello from go")
	set, err := cache.Set(ctx, &tiercachev1.SetRequest{
		Namespace: namespace, Key: "go:user:42", Value: value,
		Ttl: durationpb.New(time.Minute), Tags: []string{"go:team:7"},
	})
	calls++
	if err != nil {
		return fmt.Errorf("Set: %w", err)
	}
	if set.Outcome != tiercachev1.SetOutcome_SET_OUTCOME_STORED || set.Version == 0 {
		return fmt.Errorf("Set: want STORED with a version, got %v", set)
	}
	got, err := cache.Get(ctx, &tiercachev1.GetRequest{Namespace: namespace, Key: "go:user:42"})
	calls++
	if err != nil {
		return fmt.Errorf("Get: %w", err)
	}
	if got.Outcome != tiercachev1.GetOutcome_GET_OUTCOME_HIT {
		return fmt.Errorf("Get: want HIT, got %v", got)
	}
	if e := got.Entry; !bytes.Equal(e.GetValue(), value) || e.GetVersion() != set.Version ||
		len(e.GetTags()) != 1 || e.GetTags()[0] != "go:team:7" {
		return fmt.Errorf("Get: want %q at version %d tagged go:team:7, got %v", value, set.Version, e)
	}

	// A key nobody wrote is a miss, not an error.
	miss, err := cache.Get(ctx, &tiercachev1.GetRequest{Namespace: namespace, Key: "go:nobody"})
	calls++
	if err != nil {
		return fmt.Errorf("Get (missing key): %w", err)
	}
	if miss.Outcome != tiercachev1.GetOutcome_GET_OUTCOME_MISS || miss.Entry != nil {
		return fmt.Errorf("Get (missing key): want MISS without an entry, got %v", miss)
	}

	// GetOrSet on a cold key hands this caller the lease; it computes and fills.
	cold, err := cache.GetOrSet(ctx, &tiercachev1.GetOrSetRequest{Namespace: namespace, Key: "go:report:7"})
	calls++
	if err != nil {
		return fmt.Errorf("GetOrSet (cold): %w", err)
	}
	if cold.Outcome != tiercachev1.GetOrSetOutcome_GET_OR_SET_OUTCOME_LEASE || cold.Lease.GetToken() == "" {
		return fmt.Errorf("GetOrSet (cold): want LEASE with a token, got %v", cold)
	}
	report := []byte("report 7, computed by go")
	fill, err := cache.Fill(ctx, &tiercachev1.FillRequest{
		Namespace: namespace, Key: "go:report:7", LeaseToken: cold.Lease.Token,
		Value: report, Ttl: durationpb.New(time.Minute),
	})
	calls++
	if err != nil {
		return fmt.Errorf("Fill: %w", err)
	}
	if fill.Outcome != tiercachev1.FillOutcome_FILL_OUTCOME_STORED || fill.Version == 0 {
		return fmt.Errorf("Fill: want STORED with a version, got %v", fill)
	}

	// The next GetOrSet finds the filled value.
	warm, err := cache.GetOrSet(ctx, &tiercachev1.GetOrSetRequest{Namespace: namespace, Key: "go:report:7"})
	calls++
	if err != nil {
		return fmt.Errorf("GetOrSet (warm): %w", err)
	}
	if warm.Outcome != tiercachev1.GetOrSetOutcome_GET_OR_SET_OUTCOME_HIT || warm.Lease != nil ||
		!bytes.Equal(warm.Entry.GetValue(), report) || warm.Entry.GetVersion() != fill.Version {
		return fmt.Errorf("GetOrSet (warm): want HIT with %q at version %d, got %v", report, fill.Version, warm)
	}

	fmt.Printf("go smoke: ok (%d calls against %s)\n", calls, addr)
	return nil
}
