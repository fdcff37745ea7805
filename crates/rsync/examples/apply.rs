//! Applies a delta to a basis file the way a device does (positioned reads, streaming output).
//!
//! usage: apply BASIS DELTA OUT

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [basis, delta, out] = &args[..] else {
        eprintln!("usage: apply BASIS DELTA OUT");
        std::process::exit(2);
    };
    let basis = File::open(basis).expect("basis");
    let delta = BufReader::new(File::open(delta).expect("delta"));
    let out = BufWriter::with_capacity(1 << 16, File::create(out).expect("out"));
    let t = Instant::now();
    let n = bru_rsync::patch(&basis, delta, out).expect("patch");
    let s = t.elapsed().as_secs_f64();
    println!("{n} bytes in {s:.2} s ({:.0} MB/s)", n as f64 / s / 1e6);
}
