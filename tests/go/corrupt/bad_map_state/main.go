//go:build !go1.24 || (!go1.26 && !goexperiment.swissmap)

// bad_map_state corrupts a classic Go map the way a racing write into an
// evacuated bucket does, deterministically: while the map grows, it marks
// an occupied slot of a bucket the grow has not evacuated yet as
// "evacuated", then keeps assigning. The grow reaches that bucket and the
// runtime aborts with `fatal error: bad map state` (runtime.throw), the
// crash path a real race takes when both writers passed the runtime's own
// concurrent-write check. mapguard's probe on runtime.throw must report it
// and act before the runtime prints.
//
// Classic maps only (Go 1.23, or 1.24–1.25 with GOEXPERIMENT=noswissmap):
// it reads the runtime's hmap and bucket layout.
package main

import (
	"flag"
	"fmt"
	"os"
	"unsafe"
)

// The classic runtime's hmap (runtime/map.go).
type hmap struct {
	count      int
	flags      uint8
	B          uint8
	noverflow  uint16
	hash0      uint32
	buckets    unsafe.Pointer
	oldbuckets unsafe.Pointer
	nevacuate  uintptr
	extra      unsafe.Pointer
}

// A bucket of map[int64]int64: tophash, keys, elems, overflow.
type bucket struct {
	tophash  [8]uint8
	keys     [8]int64
	elems    [8]int64
	overflow unsafe.Pointer
}

const (
	emptyOne    = 1
	evacuatedX  = 2
	minTopHash  = 5
	bucketCount = 8
)

func header(m map[int64]int64) *hmap {
	return *(**hmap)(unsafe.Pointer(&m))
}

func main() {
	flag.Parse()
	m := make(map[int64]int64)
	next := int64(0)
	// Grow until a grow is in progress (oldbuckets set) with at least
	// one old bucket not evacuated yet.
	var victim *bucket
	for victim == nil {
		m[next] = next // LINE:assign
		next++
		h := header(m)
		if h.oldbuckets == nil || h.B < 4 {
			continue
		}
		old := uintptr(1) << (h.B - 1)
		for i := h.nevacuate; i < old && victim == nil; i++ {
			b := (*bucket)(unsafe.Add(h.oldbuckets, i*unsafe.Sizeof(bucket{})))
			top := b.tophash[0]
			if top > emptyOne && top < minTopHash {
				continue // already evacuated
			}
			for k := 1; k < bucketCount; k++ {
				if b.tophash[k] >= minTopHash {
					// What a write racing the evacuation leaves behind.
					b.tophash[k] = evacuatedX
					victim = b
					break
				}
			}
		}
	}
	fmt.Println("corrupted a bucket the grow has not reached yet; assigning on")
	for i := 0; i < 1<<20; i++ {
		m[next] = next // LINE:grow
		next++
	}
	fmt.Println("the runtime never evacuated the corrupted bucket")
	os.Exit(1)
}
