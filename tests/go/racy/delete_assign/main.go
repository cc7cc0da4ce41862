// delete_assign: one goroutine deletes while another assigns the same
// int keys (runtime.mapdelete_fast64 vs runtime.mapassign_fast64).
// Without mapguard the Go runtime usually dies with
// "fatal error: concurrent map writes"; if the race never shows, it exits 0
// after -duration. With -wait-signal it races only once it receives
// SIGUSR1, with -start-delay only after that long (for enforcers that
// attach to a process already running: a signal from a test, or a delay in
// a container that nobody signals).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"
)

const keys = 64

//go:noinline
func deleter(m map[int]int, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		delete(m, i%keys) // LINE:delete
	}
}

//go:noinline
func assigner(m map[int]int, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		m[i%keys] = i // LINE:assign
	}
}

func main() {
	duration := flag.Duration("duration", 10*time.Second, "give up after this long")
	waitSignal := flag.Bool("wait-signal", false, "start racing on SIGUSR1")
	startDelay := flag.Duration("start-delay", 0, "start racing after this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)
	if *waitSignal {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		fmt.Println("delete_assign: waiting for SIGUSR1")
		<-usr1
	}
	if *startDelay > 0 {
		fmt.Printf("delete_assign: racing in %v\n", *startDelay)
		time.Sleep(*startDelay)
	}

	m := make(map[int]int)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); deleter(m, stop) }()
	go func() { defer wg.Done(); assigner(m, stop) }()
	time.Sleep(*duration)
	close(stop)
	wg.Wait()
	fmt.Println("delete_assign: survived without a detected race")
}
