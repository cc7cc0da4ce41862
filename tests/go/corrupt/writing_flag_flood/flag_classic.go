//go:build !go1.24 || (!go1.26 && !goexperiment.swissmap)

package main

import "unsafe"

// setWriting sets hashWriting in a classic map's hmap.flags (runtime/map.go:
// `count int` then `flags uint8`).
func setWriting(m map[int]int) {
	h := *(*unsafe.Pointer)(unsafe.Pointer(&m))
	*(*uint8)(unsafe.Add(h, unsafe.Sizeof(int(0)))) |= 4
}
