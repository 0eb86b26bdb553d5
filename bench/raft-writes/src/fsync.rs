//! The disk's own fsync latency, measured where both clusters keep their data: the floor
//! under any write that is acknowledged only once it is durable.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Percentiles of `fdatasync` after overwriting one 4 KiB block.
#[derive(Debug, Clone, Copy)]
pub struct FsyncLatency {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
}

/// Overwrites the first 4 KiB of a scratch file in `dir` and `fdatasync`s it, `samples` times.
pub fn measure(dir: &Path, samples: usize) -> std::io::Result<FsyncLatency> {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    // First write allocates the block; measure overwrites, like a log's tail page.
    file.write_all(&block)?;
    file.sync_all()?;
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&block)?;
        let start = Instant::now();
        file.sync_data()?;
        latencies.push(start.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    latencies.sort_unstable();
    Ok(FsyncLatency {
        samples,
        p50: crate::report::percentile(&latencies, 50.0),
        p99: crate::report::percentile(&latencies, 99.0),
    })
}
