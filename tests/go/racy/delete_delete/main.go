// delete_delete: two goroutines delete the same keys of a map that the main
// goroutine refills between rounds (runtime.mapdelete_fast64 vs itself).
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

const keys = 512

//go:noinline
func deleteAll(m map[int]int) {
	for k := 0; k < keys; k++ {
		delete(m, k) // LINE:delete
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	m := make(map[int]int, keys)
	deadline := time.Now().Add(*duration)
	for time.Now().Before(deadline) {
		for k := 0; k < keys; k++ {
			m[k] = k
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() { defer wg.Done(); <-start; deleteAll(m) }()
		}
		close(start)
		wg.Wait()
	}
	fmt.Println("delete_delete: survived without a detected race")
}
