// mapheavy: a single goroutine doing -n iterations of assign + read + delete
// on a small int-keyed map (runtime.mapassign_fast64, mapaccess2_fast64,
// mapdelete_fast64: three probed calls per iteration, no races). It times
// its own loop, so start-up and probe attachment are not measured, and
// prints one JSON line: {"iterations":N,"map_calls":3N,"elapsed_ns":T,"ns_per_iter":T/N}.
//
// With -shared, another goroutine writes the map once before the timed loop
// (handed over a channel: still no race), so the map counts as shared and
// mapguard records the writer's stack on every write.
//
// With -reads, each iteration is one read `sum += m[k]` instead
// (runtime.mapaccess1_fast64, which Go 1.27 made a wrapper of
// mapaccess2_fast64: one probed call per iteration on every release).
package main

import (
	"encoding/json"
	"flag"
	"os"
	"runtime"
	"time"
)

//go:noinline
func churn(m map[int]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		k := i & 7
		m[k] = i
		if v, ok := m[k^1]; ok {
			sum += v
		}
		delete(m, k^4)
	}
	return sum
}

//go:noinline
func reads(m map[int]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		sum += m[i&7]
	}
	return sum
}

func main() {
	n := flag.Int("n", 2_000_000, "iterations")
	shared := flag.Bool("shared", false, "let a second goroutine write the map first")
	readsOnly := flag.Bool("reads", false, "time map reads (m[k]) instead")
	flag.Parse()
	runtime.GOMAXPROCS(1)

	m := make(map[int]int, 8)
	if *shared {
		done := make(chan struct{})
		go func() {
			m[100] = 1
			delete(m, 100)
			close(done)
		}()
		<-done
	}
	churn(m, 1000) // warm up: the map reaches its steady size
	loop, calls := churn, 3
	if *readsOnly {
		loop, calls = reads, 1
	}
	start := time.Now()
	sum := loop(m, *n)
	elapsed := time.Since(start)
	_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
		"iterations":  *n,
		"map_calls":   calls * *n,
		"elapsed_ns":  elapsed.Nanoseconds(),
		"ns_per_iter": float64(elapsed.Nanoseconds()) / float64(*n),
		"checksum":    sum,
	})
}
