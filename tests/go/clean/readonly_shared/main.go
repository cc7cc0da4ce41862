// readonly_shared: a map is built before any goroutine starts and then only
// read and ranged by many goroutines at once: legal, no violations.
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

	m := make(map[int]int, 4096)
	for i := 0; i < 4096; i++ {
		m[i] = i * i
	}
	var sum atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(*duration)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			local := 0
			for i := 0; time.Now().Before(deadline); i++ {
				local += m[(i+g)%4096]
				if v, ok := m[i]; ok {
					local += v
				}
				if i%2048 == 0 {
					for k, v := range m {
						local += k ^ v
					}
				}
			}
			sum.Add(int64(local))
		}(g)
	}
	wg.Wait()
	fmt.Println("readonly_shared: sum", sum.Load())
}
