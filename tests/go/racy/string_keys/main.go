// string_keys: delete vs assign on a map with string keys
// (runtime.mapdelete_faststr vs runtime.mapassign_faststr).
package main

import (
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"time"
)

const keys = 64

//go:noinline
func deleter(m map[string]int, names []string, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		delete(m, names[i%keys]) // LINE:delete
	}
}

//go:noinline
func assigner(m map[string]int, names []string, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		m[names[i%keys]] = i // LINE:assign
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	names := make([]string, keys)
	for i := range names {
		names[i] = "key-" + strconv.Itoa(i)
	}
	m := make(map[string]int)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); deleter(m, names, stop) }()
	go func() { defer wg.Done(); assigner(m, names, stop) }()
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	fmt.Println("string_keys: survived without a detected race")
}
