// struct_keys: delete vs assign on a map with struct keys, which go through
// the generic runtime.mapdelete / runtime.mapassign.
package main

import (
	"flag"
	"fmt"
	"runtime"
	"sync"
	"time"
)

const keys = 64

type point struct {
	x, y int
	tag  string
}

//go:noinline
func deleter(m map[point]int, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		delete(m, point{i % keys, i % 7, "p"}) // LINE:delete
	}
}

//go:noinline
func assigner(m map[point]int, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		m[point{i % keys, i % 7, "p"}] = i // LINE:assign
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	m := make(map[point]int)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); deleter(m, stop) }()
	go func() { defer wg.Done(); assigner(m, stop) }()
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	fmt.Println("struct_keys: survived without a detected race")
}
