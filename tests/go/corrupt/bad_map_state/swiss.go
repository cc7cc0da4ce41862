//go:build go1.24 && (go1.26 || goexperiment.swissmap)

// Swiss maps have no buckets to corrupt this way: see main.go.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bad_map_state: built with swiss maps; it needs classic maps")
	os.Exit(3)
}
