// reflect_maps: map operations through reflect (SetMapIndex, MapIndex,
// MapRange, Clear) and encoding/json on maps, all under a mutex, while
// another goroutine uses the map directly. Go 1.24's reflect inlines some
// runtime map entry points, so mapguard probes reflect's own; correctly
// synchronized, so no violations.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"time"
)

func main() {
	duration := flag.Duration("duration", 1500*time.Millisecond, "run this long")
	flag.Parse()
	runtime.GOMAXPROCS(2)

	var mu sync.Mutex
	m := map[string]int{}
	v := reflect.ValueOf(m)
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	var ops [2]int
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			k := reflect.ValueOf("k" + strconv.Itoa(i%64))
			mu.Lock()
			switch i % 5 {
			case 0, 1:
				v.SetMapIndex(k, reflect.ValueOf(i))
			case 2:
				v.SetMapIndex(k, reflect.Value{}) // delete
			case 3:
				_ = v.MapIndex(k)
			default:
				for it := v.MapRange(); it.Next(); {
					_ = it.Key()
				}
				if i%1000 == 4 {
					v.Clear()
				}
			}
			mu.Unlock()
			ops[0]++
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			mu.Lock()
			m["d"+strconv.Itoa(i%16)] = i
			if i%10 == 0 {
				if _, err := json.Marshal(m); err != nil {
					panic(err)
				}
			}
			mu.Unlock()
			ops[1]++
		}
	}()
	wg.Wait()
	fmt.Println("reflect_maps: ops", ops[0]+ops[1])
}
