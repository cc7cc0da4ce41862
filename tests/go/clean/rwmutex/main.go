// rwmutex: one writer under Lock, many readers under RLock reading and
// ranging concurrently. Concurrent reads are legal: no violations.
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

	var mu sync.RWMutex
	m := make(map[string]int)
	for i := 0; i < 500; i++ {
		m[fmt.Sprint("k", i)] = i
	}
	var reads atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(*duration)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			k := fmt.Sprint("k", i%500)
			mu.Lock()
			if i%2 == 0 {
				delete(m, k)
			} else {
				m[k] = i
			}
			mu.Unlock()
		}
	}()
	for r := 0; r < 16; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				mu.RLock()
				_, ok := m[fmt.Sprint("k", (i+r)%500)]
				if i%512 == 0 {
					for k := range m {
						_ = k
					}
				}
				mu.RUnlock()
				if ok {
					reads.Add(1)
				}
			}
		}(r)
	}
	wg.Wait()
	fmt.Println("rwmutex: hits", reads.Load())
}
