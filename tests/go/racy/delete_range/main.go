// delete_range: one goroutine deletes (and refills) keys while another
// ranges over the map (mapdelete vs mapiterinit/mapiternext, or
// mapIterStart/mapIterNext with swiss maps).
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
			m[k] = k
		}
	}
}

//go:noinline
func ranger(m map[int]int, stop <-chan struct{}) (sum int) {
	for {
		select {
		case <-stop:
			return sum
		default:
		}
		for k, v := range m { // LINE:range
			sum += k + v
		}
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	m := make(map[int]int, keys)
	for k := 0; k < keys; k++ {
		m[k] = k
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); writer(m, stop) }()
	go func() { defer wg.Done(); ranger(m, stop) }()
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	fmt.Println("delete_range: survived without a detected race")
}
