// syncmap: goroutines share a sync.Map (Store, Load, Delete, Range). Any
// runtime maps it uses internally are protected: no violations.
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

	var sm sync.Map
	var wg sync.WaitGroup
	deadline := time.Now().Add(*duration)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				k := (i + g) % 300
				switch i % 3 {
				case 0:
					sm.Store(k, i)
				case 1:
					sm.Delete(k)
				default:
					sm.Load(k)
				}
				if i%1000 == 0 {
					sm.Range(func(_, _ any) bool { return true })
				}
			}
		}(g)
	}
	wg.Wait()
	n := 0
	sm.Range(func(_, _ any) bool { n++; return true })
	fmt.Println("syncmap: entries", n)
}
