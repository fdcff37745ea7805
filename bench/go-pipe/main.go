// go-pipe measures what a write through Go's io.Pipe costs when a goroutine at the other
// end hashes what it reads: the hand-off between librsync-go's Patch and the layer store on a
// balena device (device-apply.md, section 2). Standard library only.
//
// usage: go-pipe WRITES SIZE GOMAXPROCS
//
// Prints one JSON object: the wall microseconds per write with the pipe, with the hashing done
// in place, and their difference (the hand-off).
package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"time"
)

type result struct {
	Writes     int     `json:"writes"`
	Size       int     `json:"size"`
	Gomaxprocs int     `json:"gomaxprocs"`
	InlineUs   float64 `json:"inline_us_per_write"`
	PipeUs     float64 `json:"pipe_us_per_write"`
	HandoffUs  float64 `json:"handoff_us_per_write"`
	GoVersion  string  `json:"go_version"`
}

func arg(i int) int {
	if len(os.Args) <= i {
		fmt.Fprintln(os.Stderr, "usage: go-pipe WRITES SIZE GOMAXPROCS")
		os.Exit(2)
	}
	v, err := strconv.Atoi(os.Args[i])
	if err != nil || v < 1 {
		fmt.Fprintf(os.Stderr, "ERROR: %q is not a positive integer\n", os.Args[i])
		os.Exit(2)
	}
	return v
}

func main() {
	writes, size, procs := arg(1), arg(2), arg(3)
	runtime.GOMAXPROCS(procs)
	chunk := make([]byte, size)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}

	start := time.Now()
	h := sha256.New()
	for i := 0; i < writes; i++ {
		h.Write(chunk)
	}
	inlineSum := h.Sum(nil)
	inline := time.Since(start)

	pr, pw := io.Pipe()
	done := make(chan []byte)
	go func() {
		h := sha256.New()
		buf := make([]byte, 32*1024)
		for {
			n, err := pr.Read(buf)
			h.Write(buf[:n])
			if err != nil {
				break
			}
		}
		done <- h.Sum(nil)
	}()
	start = time.Now()
	for i := 0; i < writes; i++ {
		if _, err := pw.Write(chunk); err != nil {
			fmt.Fprintln(os.Stderr, "ERROR:", err)
			os.Exit(1)
		}
	}
	pw.Close()
	pipedSum := <-done
	piped := time.Since(start)
	if string(pipedSum) != string(inlineSum) {
		fmt.Fprintln(os.Stderr, "ERROR: the pipe's reader hashed other bytes")
		os.Exit(1)
	}

	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(writes) / 1000 }
	out, _ := json.Marshal(result{writes, size, procs, per(inline), per(piped), per(piped - inline), runtime.Version()})
	fmt.Println(string(out))
}
