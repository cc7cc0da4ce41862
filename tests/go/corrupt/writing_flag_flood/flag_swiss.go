//go:build go1.24 && (go1.26 || goexperiment.swissmap)

package main

import "unsafe"

// setWriting sets a swiss map's Map.writing (internal/runtime/maps:
// used uint64, seed uintptr, dirPtr, dirLen int, globalDepth uint8,
// globalShift uint8, writing uint8).
func setWriting(m map[int]int) {
	h := *(*unsafe.Pointer)(unsafe.Pointer(&m))
	*(*uint8)(unsafe.Add(h, 8+8+8+8+1+1)) = 1
}
