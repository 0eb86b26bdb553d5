//! The closed-loop load: N writers, each with its own connection, each issuing its next write
//! as soon as the previous one is acknowledged, until the duration is up. Every write's
//! latency is kept, so percentiles are exact rather than bucketed.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

/// After this many failures in a row a writer gives up, so a dead cluster cannot turn the run
/// into a tight error loop.
const MAX_CONSECUTIVE_ERRORS: u32 = 10;

/// One client connection that performs committed writes, one at a time.
pub trait Writer: Send + 'static {
    /// Writes item `seq` of this writer and returns once the system acknowledged it as
    /// committed.
    fn write(&mut self, seq: u64) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What a load run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latency of every acknowledged write, in no particular order.
    pub latencies: Vec<Duration>,
    pub errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// From the start until the last writer's last write returned.
    pub elapsed: Duration,
}

/// Runs `writers` concurrently for `duration`. Writes in flight at the deadline are awaited
/// (bounded by `timeout`) and counted; `elapsed` covers them.
pub async fn run<W: Writer>(writers: Vec<W>, duration: Duration, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for mut writer in writers {
        tasks.spawn(async move {
            let mut out = Outcome::default();
            let mut consecutive = 0;
            let mut seq = 0u64;
            while Instant::now() < deadline && consecutive < MAX_CONSECUTIVE_ERRORS {
                let sent = Instant::now();
                let result = match tokio::time::timeout(timeout, writer.write(seq)).await {
                    Ok(result) => result,
                    Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
                };
                match result {
                    Ok(()) => {
                        out.latencies.push(sent.elapsed());
                        consecutive = 0;
                    }
                    Err(err) => {
                        out.errors += 1;
                        consecutive += 1;
                        out.first_error.get_or_insert_with(|| format!("{err:#}"));
                    }
                }
                seq += 1;
            }
            out
        });
    }
    let mut total = Outcome::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(out) => {
                total.latencies.extend(out.latencies);
                total.errors += out.errors;
                if total.first_error.is_none() {
                    total.first_error = out.first_error;
                }
            }
            Err(err) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("writer task failed: {err}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        delay: Duration,
        fail_every: u64,
    }

    impl Writer for Fixed {
        async fn write(&mut self, seq: u64) -> anyhow::Result<()> {
            tokio::time::sleep(self.delay).await;
            if self.fail_every != 0 && seq % self.fail_every == self.fail_every - 1 {
                anyhow::bail!("write {seq} refused");
            }
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_writer_runs_one_write_at_a_time_until_the_deadline() {
        let writers = (0..4)
            .map(|_| Fixed {
                delay: Duration::from_millis(10),
                fail_every: 0,
            })
            .collect();
        let out = run(writers, Duration::from_millis(100), Duration::from_secs(1)).await;
        // 4 writers x 10 sequential writes of 10 ms in 100 ms.
        assert_eq!(out.latencies.len(), 40);
        assert_eq!(out.errors, 0);
        assert!(
            out.latencies
                .iter()
                .all(|l| *l == Duration::from_millis(10))
        );
        assert_eq!(out.elapsed, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_counted_apart_and_timeouts_are_errors() {
        let writers = vec![Fixed {
            delay: Duration::from_millis(10),
            fail_every: 2,
        }];
        let out = run(writers, Duration::from_millis(100), Duration::from_secs(1)).await;
        assert_eq!(out.latencies.len(), 5);
        assert_eq!(out.errors, 5);
        assert_eq!(out.first_error.as_deref(), Some("write 1 refused"));

        let slow = vec![Fixed {
            delay: Duration::from_secs(5),
            fail_every: 0,
        }];
        let out = run(slow, Duration::from_millis(100), Duration::from_secs(1)).await;
        assert_eq!(out.latencies.len(), 0);
        assert_eq!(out.errors, 1);
        assert_eq!(out.elapsed, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_keeps_failing_stops() {
        let writers = vec![Fixed {
            delay: Duration::from_millis(1),
            fail_every: 1,
        }];
        let out = run(writers, Duration::from_secs(60), Duration::from_secs(1)).await;
        assert_eq!(out.errors, u64::from(MAX_CONSECUTIVE_ERRORS));
        assert!(out.elapsed < Duration::from_secs(1));
    }
}
