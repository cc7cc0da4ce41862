// delete_grow: each round a fresh map grows from empty while another
// goroutine deletes the keys being inserted, so deletes race with growth
// (hashGrow/growWork/evacuate, or the swiss table grow/split/rehash).
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

const keys = 4096

//go:noinline
func grower(m map[int]int) {
	for k := 0; k < keys; k++ {
		m[k] = k // LINE:assign
	}
}

//go:noinline
func deleter(m map[int]int) {
	for k := 0; k < keys; k++ {
		delete(m, k) // LINE:delete
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	deadline := time.Now().Add(*duration)
	for time.Now().Before(deadline) {
		m := make(map[int]int)
		m[0] = 0
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Add(2)
		go func() { defer wg.Done(); <-start; grower(m) }()
		go func() { defer wg.Done(); <-start; deleter(m) }()
		close(start)
		wg.Wait()
	}
	fmt.Println("delete_grow: survived without a detected race")
}
