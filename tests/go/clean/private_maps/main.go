// private_maps: thousands of goroutines, each with its own map, under GC
// pressure (runtime.GC, runtime.Gosched): map addresses are reused and
// goroutines move between threads, but no map is ever shared.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

//go:noinline
func work(id int, ops *atomic.Int64) {
	m := make(map[int]string)
	for i := 0; i < 200; i++ {
		m[i] = "v"
		if i%3 == 0 {
			delete(m, i/2)
		}
		if i%50 == 0 {
			runtime.Gosched()
		}
		_ = m[i/3]
	}
	for k := range m {
		delete(m, k)
	}
	ops.Add(int64(id%2 + 1))
}

func main() {
	duration := flag.Duration("duration", 1500*time.Millisecond, "run this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	var ops atomic.Int64
	deadline := time.Now().Add(*duration)
	rounds := 0
	for time.Now().Before(deadline) {
		var wg sync.WaitGroup
		for g := 0; g < 2000; g++ {
			wg.Add(1)
			go func(g int) { defer wg.Done(); work(g, &ops) }(g)
		}
		wg.Wait()
		runtime.GC()
		rounds++
	}
	fmt.Println("private_maps: rounds", rounds, "ops", ops.Load())
}
