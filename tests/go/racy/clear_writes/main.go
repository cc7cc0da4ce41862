// clear_writes: one goroutine clears the map while another assigns to it
// (runtime.mapclear vs runtime.mapassign_fast64).
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

const keys = 256

//go:noinline
func clearer(m map[int]int, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		clear(m) // LINE:clear
	}
}

//go:noinline
func assigner(m map[int]int, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		m[i%keys] = i // LINE:assign
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	m := make(map[int]int)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); clearer(m, stop) }()
	go func() { defer wg.Done(); assigner(m, stop) }()
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	fmt.Println("clear_writes: survived without a detected race")
}
