// writing_flag_flood: a hostile tenant's flood of violation reports. It
// writes a map once (so that a write is on record as the other side of a
// report), empties it, then sets the runtime's own "writing" flag of the
// map by hand and reads it in a tight loop from -readers goroutines. Every
// read starts while the flag says another goroutine is writing, so every
// read is a report; the runtime itself returns from a read of an empty map
// before it looks at the flag, so the program never aborts. Without a
// per-Pod limit on reports it fills the node's shared ring buffer and
// hides the races of every other Pod. With -wait-signal it floods only
// once it receives SIGUSR1.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

//go:noinline
func read(m map[int]int, k int) int {
	return m[k] // LINE:read
}

func main() {
	duration := flag.Duration("duration", 30*time.Second, "flood this long")
	waitSignal := flag.Bool("wait-signal", false, "start flooding on SIGUSR1")
	readers := flag.Int("readers", 2, "reading goroutines")
	flag.Parse()
	if *waitSignal {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		fmt.Println("writing_flag_flood: waiting for SIGUSR1")
		<-usr1
	}
	m := make(map[int]int)
	m[1] = 1
	delete(m, 1)
	setWriting(m)
	for i := 0; i < *readers; i++ {
		go func() {
			for k := 0; ; k++ {
				read(m, k)
			}
		}()
	}
	time.Sleep(*duration)
	fmt.Println("writing_flag_flood: done")
	os.Exit(0)
}
