// exec_on_signal: uses a map (so mapguard has functions to probe), prints
// "ready" once it listens for SIGUSR1, and on SIGUSR1 replaces itself with
// the program named by its arguments (execve: same pid, another file). For
// the tests of a process that execs between its analysis and its probes.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: exec_on_signal PROGRAM [ARGS...]")
		os.Exit(2)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	m := map[int]int{}
	fmt.Println("ready")
	tick := time.NewTicker(10 * time.Millisecond)
	for i := 0; ; i++ {
		select {
		case <-usr1:
			err := syscall.Exec(os.Args[1], os.Args[1:], os.Environ())
			fmt.Fprintln(os.Stderr, "exec:", err)
			os.Exit(1)
		case <-tick.C:
			m[i%16] = i
			delete(m, (i+8)%16)
		}
	}
}
