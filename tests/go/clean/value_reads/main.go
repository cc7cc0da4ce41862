// value_reads: one goroutine reads goroutine-private maps through every
// read entry point the compiler calls — `v := m[k]` (runtime.mapaccess1*)
// and `v, ok := m[k]` (mapaccess2*), for int32, int64, string and struct
// keys, and for an element too large for the shared zero value
// (mapaccess1_fat, mapaccess2_fat) — -n times each, and prints one JSON
// line: {"reads":10N,"checksum":...}. No races.
//
// In Go 1.27 mapaccess1* only call mapaccess2*, and in every release the
// _fat ones call mapaccess1 or mapaccess2: a read must still be one probe hit.
package main

import (
	"flag"
	"fmt"
)

type pair struct{ a, b int }

// big is larger than the runtime's shared zero value (1024 bytes).
type big struct {
	x   int
	pad [2048]byte
}

//go:noinline
func value32(m map[int32]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		sum += m[int32(i&7)]
	}
	return sum
}

//go:noinline
func comma32(m map[int32]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		if v, ok := m[int32(i&7)]; ok {
			sum += v
		}
	}
	return sum
}

//go:noinline
func value64(m map[int]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		sum += m[i&7]
	}
	return sum
}

//go:noinline
func comma64(m map[int]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		if v, ok := m[i&7]; ok {
			sum += v
		}
	}
	return sum
}

//go:noinline
func valueStr(m map[string]int, keys []string, n int) (sum int) {
	for i := 0; i < n; i++ {
		sum += m[keys[i&7]]
	}
	return sum
}

//go:noinline
func commaStr(m map[string]int, keys []string, n int) (sum int) {
	for i := 0; i < n; i++ {
		if v, ok := m[keys[i&7]]; ok {
			sum += v
		}
	}
	return sum
}

//go:noinline
func valueStruct(m map[pair]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		sum += m[pair{i & 7, 1}]
	}
	return sum
}

//go:noinline
func commaStruct(m map[pair]int, n int) (sum int) {
	for i := 0; i < n; i++ {
		if v, ok := m[pair{i & 7, 1}]; ok {
			sum += v
		}
	}
	return sum
}

//go:noinline
func valueFat(m map[int]big, n int) (sum int) {
	for i := 0; i < n; i++ {
		sum += m[i&7].x
	}
	return sum
}

//go:noinline
func commaFat(m map[int]big, n int) (sum int) {
	for i := 0; i < n; i++ {
		if v, ok := m[i&7]; ok {
			sum += v.x
		}
	}
	return sum
}

func main() {
	n := flag.Int("n", 50_000, "reads through each entry point")
	flag.Parse()

	m32 := map[int32]int{}
	m64 := map[int]int{}
	mstr := map[string]int{}
	mpair := map[pair]int{}
	mbig := map[int]big{}
	keys := make([]string, 8)
	for i := 0; i < 4; i++ {
		keys[i] = fmt.Sprintf("key-%d", i)
		keys[i+4] = fmt.Sprintf("absent-%d", i)
		m32[int32(i)] = i
		m64[i] = i
		mstr[keys[i]] = i
		mpair[pair{i, 1}] = i
		mbig[i] = big{x: i}
	}
	sum := value32(m32, *n) + comma32(m32, *n) +
		value64(m64, *n) + comma64(m64, *n) +
		valueStr(mstr, keys, *n) + commaStr(mstr, keys, *n) +
		valueStruct(mpair, *n) + commaStruct(mpair, *n) +
		valueFat(mbig, *n) + commaFat(mbig, *n)
	fmt.Printf("{\"reads\":%d,\"checksum\":%d}\n", 10**n, sum)
}
