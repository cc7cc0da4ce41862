// channel_handoff: a map is filled by one goroutine, sent over a channel,
// and mutated by the receiver, which sends it on: ownership moves with the
// channel (a happens-before edge), so there is never concurrent access.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"time"
)

// put is small enough to be inlined into stage: its map assignment is
// symbolized as main.put, called from main.stage (inline-aware stacks).
func put(m map[int]int, k, v int) {
	m[k] = v // LINE:put
}

//go:noinline
func stage(in <-chan map[int]int, out chan<- map[int]int, base int) {
	for m := range in {
		for i := 0; i < 100; i++ {
			put(m, base+i, i) // LINE:call-put
			delete(m, base+i-50)
		}
		out <- m
	}
	close(out)
}

func main() {
	duration := flag.Duration("duration", 1500*time.Millisecond, "run this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	a, b, c := make(chan map[int]int), make(chan map[int]int), make(chan map[int]int)
	go stage(a, b, 0)
	go stage(b, c, 1000)
	deadline := time.Now().Add(*duration)
	n := 0
	for time.Now().Before(deadline) {
		a <- make(map[int]int)
		m := <-c
		n += len(m)
		clear(m)
	}
	close(a)
	for range c {
	}
	fmt.Println("channel_handoff: entries", n)
}
