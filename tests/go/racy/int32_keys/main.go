// int32_keys: delete vs assign on a map with int32 keys
// (runtime.mapdelete_fast32 vs runtime.mapassign_fast32).
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

const keys = 64

//go:noinline
func deleter(m map[int32]int, stop <-chan struct{}) {
	for i := int32(0); ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		delete(m, i%keys) // LINE:delete
	}
}

//go:noinline
func assigner(m map[int32]int, stop <-chan struct{}) {
	for i := int32(0); ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		m[i%keys] = int(i) // LINE:assign
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	m := make(map[int32]int)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); deleter(m, stop) }()
	go func() { defer wg.Done(); assigner(m, stop) }()
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	fmt.Println("int32_keys: survived without a detected race")
}
