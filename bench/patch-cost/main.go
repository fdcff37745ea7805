// patch-cost applies a delta with librsync-go's own Patch, as a balena device does: the output
// written into io.Pipe, whose reader is a goroutine hashing it (the DiffID). The basis is held in
// memory, so that what is timed is the decoder and the pipe, per command. The delta is read as
// the engine hands it over: straight from the gzip reader, unbuffered. Built against a
// librsync-go checkout by bench/patch_cost.sh (this file is not part of that library).
//
// usage: patch-cost BASIS DELTA REPEAT   (DELTA raw or gzip'd)
//
// Prints one JSON object: median wall seconds of REPEAT applies, every run, the output's
// sha256 and length.
package main

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"time"

	librsync "github.com/balena-os/librsync-go"
)

type result struct {
	ApplySeconds float64   `json:"apply_seconds"`
	Runs         []float64 `json:"runs_apply_seconds"`
	Sha256       string    `json:"sha256"`
	OutputBytes  int64     `json:"output_bytes"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "ERROR: "+format+"\n", args...)
	os.Exit(1)
}

// apply runs Patch once and returns its wall time, the output's digest and length.
func apply(basis []byte, delta []byte) (time.Duration, string, int64) {
	var in io.Reader = bytes.NewReader(delta)
	if len(delta) > 2 && delta[0] == 0x1f && delta[1] == 0x8b {
		gz, err := gzip.NewReader(bytes.NewReader(delta))
		if err != nil {
			fail("delta: %v", err)
		}
		in = gz
	}
	start := time.Now()
	pr, pw := io.Pipe()
	type digest struct {
		sum string
		n   int64
	}
	done := make(chan digest)
	go func() {
		h := sha256.New()
		n, _ := io.Copy(h, pr)
		done <- digest{hex.EncodeToString(h.Sum(nil)), n}
	}()
	err := librsync.Patch(bytes.NewReader(basis), in, pw)
	pw.CloseWithError(err)
	d := <-done
	elapsed := time.Since(start)
	if err != nil {
		fail("patch: %v", err)
	}
	return elapsed, d.sum, d.n
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: patch-cost BASIS DELTA REPEAT")
		os.Exit(2)
	}
	basis, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("basis: %v", err)
	}
	delta, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("delta: %v", err)
	}
	repeat, err := strconv.Atoi(os.Args[3])
	if err != nil || repeat < 1 {
		fail("%q is not a positive integer", os.Args[3])
	}
	var r result
	for i := 0; i < repeat; i++ {
		t, sum, n := apply(basis, delta)
		r.Runs = append(r.Runs, t.Seconds())
		r.Sha256, r.OutputBytes = sum, n
	}
	runs := append([]float64(nil), r.Runs...)
	sort.Float64s(runs)
	r.ApplySeconds = runs[len(runs)/2]
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}
