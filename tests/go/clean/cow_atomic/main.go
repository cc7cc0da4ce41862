// cow_atomic: copy-on-write maps. Readers Load an immutable map from an
// atomic.Pointer; the writer copies it, modifies the private copy and
// Stores it. No map is written after it is published: no violations.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	duration := flag.Duration("duration", 1500*time.Millisecond, "run this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	var cur atomic.Pointer[map[int]int]
	first := map[int]int{0: 0}
	cur.Store(&first)
	var wg sync.WaitGroup
	deadline := time.Now().Add(*duration)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; time.Now().Before(deadline); i++ {
			old := *cur.Load()
			next := make(map[int]int, len(old)+1)
			for k, v := range old {
				next[k] = v
			}
			next[i%200] = i
			delete(next, (i+100)%200)
			cur.Store(&next)
		}
	}()
	var hits atomic.Int64
	for r := 0; r < 6; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				m := *cur.Load()
				if _, ok := m[(i+r)%200]; ok {
					hits.Add(1)
				}
			}
		}(r)
	}
	wg.Wait()
	fmt.Println("cow_atomic: hits", hits.Load(), "size", len(*cur.Load()))
}
