// mutex: several writers share one map under a sync.Mutex (assign, delete,
// read, range, clear). Correctly synchronized: mapguard must report nothing.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

func main() {
	duration := flag.Duration("duration", 1500*time.Millisecond, "run this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	var mu sync.Mutex
	m := make(map[int]int)
	var ops [4]int
	var wg sync.WaitGroup
	deadline := time.Now().Add(*duration)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				k := (i*7 + g) % 1000
				mu.Lock()
				switch i % 4 {
				case 0:
					m[k] = i
				case 1:
					delete(m, k)
				case 2:
					_ = m[k]
				default:
					if i%4096 == 3 {
						for kk := range m {
							_ = kk
						}
					}
					if i%65536 == 3 {
						clear(m)
					}
				}
				mu.Unlock()
				ops[g]++
			}
		}(g)
	}
	wg.Wait()
	fmt.Println("mutex: ops", ops[0]+ops[1]+ops[2]+ops[3])
}
