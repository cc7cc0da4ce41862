// delete_value_read: one goroutine deletes (and refills) keys while another
// reads them with `v := m[k]` (runtime.mapdelete_fast64 vs
// runtime.mapaccess1_fast64, which in Go 1.27 only calls mapaccess2_fast64:
// the report must still name the reader's own line). The Go runtime may
// report "concurrent map read and map write".
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
func writer(m map[int]int, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		for k := 0; k < keys; k++ {
			delete(m, k) // LINE:delete
		}
		for k := 0; k < keys; k++ {
			m[k] = k + 1
		}
	}
}

//go:noinline
func reader(m map[int]int, stop <-chan struct{}) (sum int) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return sum
		default:
		}
		sum += m[i%keys] // LINE:read
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	m := make(map[int]int, keys)
	for k := 0; k < keys; k++ {
		m[k] = k + 1
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); writer(m, stop) }()
	go func() { defer wg.Done(); reader(m, stop) }()
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	fmt.Println("delete_value_read: survived without a detected race")
}
