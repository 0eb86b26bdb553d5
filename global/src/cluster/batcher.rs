//! Group commit of client writes on the leader: concurrent writes share one Raft entry.
//!
//! openraft turns every `client_write` into its own log entry, and on the leader the log store
//! receives (and flushes) those one at a time, so without batching every write pays for its
//! own append, flush and replication round. The batcher queues the writes proposed on this
//! node (its own API calls and writes forwarded by followers) and proposes everything queued
//! as one [`Command::Batch`] entry, then hands each caller the result of its own command.
//!
//! Batching is natural, without a timer: a batch goes out as soon as a proposal slot is free
//! (one in flight by default), so an idle node proposes a lone write at once, from the
//! caller's own task and unwrapped (as before batching), and a busy one collects what arrives
//! while the previous batch commits.
//! A batch is bounded by [`BatchLimits`]. Everything Raft says about a batch (not leader, no
//! quorum, stopped) is said to each of its callers, exactly as if each had proposed alone.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ForwardReply;
use crate::state::Command;
use crate::state::CommandResult;
use crate::state::Detail;
use crate::types::NodeId;

/// Proposes one Raft entry. Rules for implementations:
/// - answer `Done` only once the entry is committed and applied, with the state machine's
///   result for it (for a [`Command::Batch`], `Detail::Batch` with one result per command);
/// - give up at `deadline` with `NoQuorum`, and never answer `Done` for an entry that was not
///   committed.
pub(crate) trait Propose: Send + Sync + 'static {
    fn propose(
        &self,
        command: Command,
        deadline: Instant,
    ) -> impl Future<Output = ForwardReply<CommandResult>> + Send;
}

/// Bounds of one batch and of the proposals in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Commands per entry.
    pub max_commands: usize,
    /// Encoded size (JSON) of the commands of one entry. A single larger command still goes
    /// out, alone.
    pub max_bytes: usize,
    /// Entries proposed and not yet answered. 1 gives the largest batches: everything that
    /// arrives while one batch commits forms the next.
    pub max_in_flight: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_commands: 256,
            max_bytes: 1024 * 1024,
            max_in_flight: 1,
        }
    }
}

/// Counts since start, for metrics: entries proposed and the writes they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub proposals: u64,
    pub commands: u64,
}

/// Why a queued write got no answer from Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missed {
    /// The caller's deadline passed first. The write may still be (or have been) proposed.
    Deadline,
    /// The batcher is gone (runtime shutting down); the write was not answered.
    Stopped,
}

struct Queued {
    command: Command,
    bytes: usize,
    deadline: Instant,
    reply: oneshot::Sender<ForwardReply<CommandResult>>,
}

#[derive(Debug, Default)]
struct Counters {
    proposals: AtomicU64,
    commands: AtomicU64,
}

/// Handle on a batcher; cheap to clone.
pub(crate) struct Batcher<P> {
    shared: Arc<Shared<P>>,
}

impl<P> Clone for Batcher<P> {
    fn clone(&self) -> Self {
        Batcher {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<P> {
    proposer: P,
    limits: BatchLimits,
    counters: Counters,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Proposals in flight (at most `max_in_flight`).
    busy: usize,
    /// Writes waiting for a free slot, in call order.
    pending: VecDeque<Queued>,
}

impl<P: Propose> Batcher<P> {
    pub(crate) fn new(proposer: P, limits: BatchLimits) -> Self {
        Batcher {
            shared: Arc::new(Shared {
                proposer,
                limits,
                counters: Counters::default(),
                queue: Mutex::new(Queue::default()),
            }),
        }
    }

    /// Queues `command` now (so calls are proposed in call order) and returns the wait for its
    /// own result, which ends at `deadline` at the latest.
    ///
    /// With a slot free and nobody waiting, the returned future proposes the command itself,
    /// on the caller's task: an idle node adds no hop to a write. Otherwise the command waits
    /// for the task that takes the next batch when a proposal finishes.
    pub(crate) fn submit(
        &self,
        command: Command,
        deadline: Instant,
    ) -> impl Future<Output = Result<ForwardReply<CommandResult>, Missed>> + Send + 'static {
        let shared = self.shared.clone();
        let (reply, answer) = oneshot::channel();
        let direct = {
            let mut queue = shared.lock();
            if queue.busy < shared.limits.max_in_flight.max(1) && queue.pending.is_empty() {
                queue.busy += 1;
                Some(command)
            } else {
                queue.pending.push_back(Queued {
                    bytes: encoded_len(&command),
                    command,
                    deadline,
                    reply,
                });
                None
            }
        };
        async move {
            if let Some(command) = direct {
                // Frees the slot (and hands queued writes on) even if this future is dropped.
                let slot = Slot(shared.clone());
                shared.count(1);
                let reply = shared.proposer.propose(command, deadline).await;
                drop(slot);
                return Ok(reply);
            }
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(Missed::Stopped),
                Err(_) => Err(Missed::Deadline),
            }
        }
    }

    pub(crate) fn stats(&self) -> BatchStats {
        let counters = &self.shared.counters;
        BatchStats {
            proposals: counters.proposals.load(Ordering::Relaxed),
            commands: counters.commands.load(Ordering::Relaxed),
        }
    }
}

impl<P: Propose> Shared<P> {
    // Nothing panics while the lock is held, so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, commands: usize) {
        self.counters.proposals.fetch_add(1, Ordering::Relaxed);
        self.counters
            .commands
            .fetch_add(commands as u64, Ordering::Relaxed);
    }

    /// Takes the next batch off the queue, within the limits, leaving out writes whose caller
    /// has given up (deadline passed): not proposing them is the cheaper "may not apply".
    fn next_batch(&self, queue: &mut Queue) -> Vec<Queued> {
        let mut batch: Vec<Queued> = Vec::new();
        let mut bytes = 0usize;
        while let Some(queued) = queue.pending.pop_front() {
            if queued.reply.is_closed() {
                continue;
            }
            let full = batch.len() >= self.limits.max_commands
                || bytes.saturating_add(queued.bytes) > self.limits.max_bytes;
            if !batch.is_empty() && full {
                queue.pending.push_front(queued);
                break;
            }
            bytes = bytes.saturating_add(queued.bytes);
            batch.push(queued);
        }
        batch
    }

    /// A proposal finished: propose what queued up meanwhile, or free the slot.
    fn finished(self: &Arc<Self>) {
        let batch = {
            let mut queue = self.lock();
            let batch = self.next_batch(&mut queue);
            if batch.is_empty() {
                queue.busy = queue.busy.saturating_sub(1);
                return;
            }
            batch
        };
        // The slot passes to a task that proposes batches until the queue is empty.
        let shared = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (shutting down): the waiting callers see `Missed::Stopped`.
            return;
        };
        runtime.spawn(async move {
            let mut batch = batch;
            loop {
                shared.count(batch.len());
                propose_batch(&shared.proposer, batch).await;
                let mut queue = shared.lock();
                batch = shared.next_batch(&mut queue);
                if batch.is_empty() {
                    queue.busy = queue.busy.saturating_sub(1);
                    return;
                }
            }
        });
    }
}

/// A proposal slot held by a caller proposing its own write.
struct Slot<P: Propose>(Arc<Shared<P>>);

impl<P: Propose> Drop for Slot<P> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// Proposes `batch` as one entry and answers each caller with its own result.
async fn propose_batch<P: Propose>(proposer: &P, mut batch: Vec<Queued>) {
    let Some(deadline) = batch.iter().map(|q| q.deadline).max() else {
        return;
    };
    if batch.len() == 1
        && let Some(queued) = batch.pop()
    {
        // Alone: proposed as itself, so a lone write's entry is what it was before batching.
        let reply = proposer.propose(queued.command, deadline).await;
        let _ = queued.reply.send(reply);
        return;
    }
    let count = batch.len();
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|q| (q.command, q.reply)).unzip();
    let answer = proposer.propose(Command::Batch(commands), deadline).await;
    let failure = match answer {
        ForwardReply::Done(CommandResult::Ok {
            detail: Detail::Batch(results),
            ..
        }) if results.len() == count => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(ForwardReply::Done(result));
            }
            return;
        }
        ForwardReply::Done(other) => Failure::Fatal(format!(
            "the state machine answered a batch of {count} writes with {other:?}"
        )),
        ForwardReply::NotLeader { leader } => Failure::NotLeader(leader),
        ForwardReply::NoQuorum(why) => Failure::NoQuorum(why),
        ForwardReply::Fatal(why) => Failure::Fatal(why),
    };
    for reply in replies {
        let _ = reply.send(failure.reply());
    }
}

/// What Raft said about a whole batch, told to each of its callers.
enum Failure {
    NotLeader(Option<NodeId>),
    NoQuorum(String),
    Fatal(String),
}

impl Failure {
    fn reply(&self) -> ForwardReply<CommandResult> {
        match self {
            Failure::NotLeader(leader) => ForwardReply::NotLeader { leader: *leader },
            Failure::NoQuorum(why) => ForwardReply::NoQuorum(why.clone()),
            Failure::Fatal(why) => ForwardReply::Fatal(why.clone()),
        }
    }
}

/// Size of `command` as JSON, the form it takes in the log and on the wire, without keeping
/// the bytes.
fn encoded_len(command: &Command) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Encoding a command cannot fail (string keys only); if it did, Raft would refuse it
    // anyway, and counting it as empty only lets the batch grow by one.
    let _ = serde_json::to_writer(&mut count, command);
    count.0
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::Semaphore;
    use tokio::sync::mpsc;

    use super::*;
    use crate::state::FederationState;
    use crate::state::Rejection;

    const LONG: Duration = Duration::from_secs(30);

    /// A Raft stand-in: records each proposed entry, tells the test, applies it to a real
    /// state machine at the next index, and answers only when the test releases it (or with
    /// the scripted failure).
    #[derive(Clone)]
    struct FakeRaft {
        inner: Arc<FakeInner>,
    }

    struct FakeInner {
        state: Mutex<(FederationState, u64)>,
        proposed: mpsc::UnboundedSender<Command>,
        release: Semaphore,
        failure: Mutex<Option<ForwardReply<CommandResult>>>,
    }

    impl FakeRaft {
        /// The fake, and the stream of entries it is asked to propose.
        fn new() -> (Self, mpsc::UnboundedReceiver<Command>) {
            let (proposed, entries) = mpsc::unbounded_channel();
            let inner = FakeInner {
                state: Mutex::new((FederationState::default(), 0)),
                proposed,
                release: Semaphore::new(0),
                failure: Mutex::new(None),
            };
            (
                FakeRaft {
                    inner: Arc::new(inner),
                },
                entries,
            )
        }

        /// Lets `n` proposals answer.
        fn release(&self, n: usize) {
            self.inner.release.add_permits(n);
        }

        fn fail_with(&self, reply: ForwardReply<CommandResult>) {
            *self.inner.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reply);
        }
    }

    impl Propose for FakeRaft {
        async fn propose(&self, command: Command, _: Instant) -> ForwardReply<CommandResult> {
            let _ = self.inner.proposed.send(command.clone());
            let Ok(permit) = self.inner.release.acquire().await else {
                return ForwardReply::Fatal("closed".into());
            };
            permit.forget();
            let failure = self
                .inner
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(failure) = failure {
                return failure;
            }
            let mut guard = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let (state, index) = &mut *guard;
            *index += 1;
            ForwardReply::Done(state.apply(*index, &command))
        }
    }

    fn zone(name: &str) -> Command {
        Command::CreateZone {
            name: name.into(),
            region: String::new(),
            labels: BTreeMap::new(),
            now_ms: 1,
        }
    }

    fn deadline() -> Instant {
        Instant::now() + LONG
    }

    async fn next_entry(entries: &mut mpsc::UnboundedReceiver<Command>) -> Command {
        match tokio::time::timeout(LONG, entries.recv()).await {
            Ok(Some(entry)) => entry,
            other => panic!("no entry proposed: {other:?}"),
        }
    }

    type Answer = Result<Result<ForwardReply<CommandResult>, Missed>, tokio::task::JoinError>;

    fn done(reply: Answer) -> CommandResult {
        let Ok(reply) = reply else {
            panic!("the caller's task failed: {reply:?}");
        };
        match reply {
            Ok(ForwardReply::Done(result)) => result,
            Ok(ForwardReply::NotLeader { leader }) => panic!("not leader ({leader:?})"),
            Ok(ForwardReply::NoQuorum(why) | ForwardReply::Fatal(why)) => panic!("{why}"),
            Err(missed) => panic!("{missed:?}"),
        }
    }

    #[tokio::test]
    async fn a_lone_write_goes_out_at_once_as_itself() {
        let (raft, mut entries) = FakeRaft::new();
        let batcher = Batcher::new(raft.clone(), BatchLimits::default());
        let answer = tokio::spawn(batcher.submit(zone("a"), deadline()));
        // Proposed before anything is released: no waiting for company.
        assert_eq!(next_entry(&mut entries).await, zone("a"));
        raft.release(1);
        assert!(done(answer.await).is_ok());
        assert_eq!(
            batcher.stats(),
            BatchStats {
                proposals: 1,
                commands: 1
            }
        );
    }

    #[tokio::test]
    async fn queued_writes_share_the_next_entry_and_get_their_own_results() {
        let (raft, mut entries) = FakeRaft::new();
        let batcher = Batcher::new(raft.clone(), BatchLimits::default());
        let first = tokio::spawn(batcher.submit(zone("a"), deadline()));
        assert_eq!(next_entry(&mut entries).await, zone("a"));
        // Queued while "a" is in flight; "a" again is refused, and only for its own caller.
        let names = ["b", "c", "a", "d"];
        let rest: Vec<_> = names
            .iter()
            .map(|name| tokio::spawn(batcher.submit(zone(name), deadline())))
            .collect();
        raft.release(2);
        assert!(done(first.await).is_ok());
        assert_eq!(
            next_entry(&mut entries).await,
            Command::Batch(names.iter().map(|name| zone(name)).collect())
        );
        let mut results = Vec::new();
        for answer in rest {
            results.push(done(answer.await));
        }
        let verdicts: Vec<bool> = results.iter().map(CommandResult::is_ok).collect();
        assert_eq!(verdicts, [true, true, false, true]);
        assert!(matches!(
            results[2].rejection(),
            Some(Rejection::ZoneExists { zone }) if zone == "a"
        ));
        // Every command of the entry carries that entry's revision (index 2).
        assert!(
            results
                .iter()
                .filter_map(|r| match r {
                    CommandResult::Ok { revision, .. } => Some(*revision),
                    CommandResult::Rejected(_) => None,
                })
                .all(|revision| revision == 2)
        );
        assert_eq!(
            batcher.stats(),
            BatchStats {
                proposals: 2,
                commands: 5
            }
        );
    }

    #[tokio::test]
    async fn batches_respect_the_count_and_size_bounds() {
        let (raft, mut entries) = FakeRaft::new();
        let one = encoded_len(&zone("b"));
        let limits = BatchLimits {
            max_commands: 3,
            max_bytes: 2 * one,
            max_in_flight: 1,
        };
        let batcher = Batcher::new(raft.clone(), limits);
        let first = tokio::spawn(batcher.submit(zone("a"), deadline()));
        assert_eq!(next_entry(&mut entries).await, zone("a"));
        let names = ["b", "c", "d", "e", "f"];
        let rest: Vec<_> = names
            .iter()
            .map(|name| tokio::spawn(batcher.submit(zone(name), deadline())))
            .collect();
        raft.release(10);
        assert!(done(first.await).is_ok());
        // Two fit the byte bound (three would fit the count bound).
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < names.len() {
            match next_entry(&mut entries).await {
                Command::Batch(commands) => sizes.push(commands.len()),
                _ => sizes.push(1),
            }
        }
        assert_eq!(sizes, [2, 2, 1]);
        for answer in rest {
            assert!(done(answer.await).is_ok());
        }

        // A command above the byte bound still goes out, alone.
        let big = Command::SetTrustBundle {
            bundle_pem: "x".repeat(4 * one),
        };
        let answer = tokio::spawn(batcher.submit(big.clone(), deadline()));
        assert_eq!(next_entry(&mut entries).await, big);
        done(answer.await);
    }

    #[tokio::test]
    async fn what_raft_says_about_a_batch_is_said_to_each_caller() {
        let failures = [
            ForwardReply::NotLeader { leader: Some(2) },
            ForwardReply::NoQuorum("no majority".into()),
            ForwardReply::Fatal("stopped".into()),
            // A batch must be answered per command; anything else is a bug, reported as such.
            ForwardReply::Done(CommandResult::Rejected(Rejection::NotInitialized)),
        ];
        for failure in failures {
            let (raft, mut entries) = FakeRaft::new();
            let batcher = Batcher::new(raft.clone(), BatchLimits::default());
            let first = tokio::spawn(batcher.submit(zone("a"), deadline()));
            next_entry(&mut entries).await;
            let rest: Vec<_> = ["b", "c"]
                .iter()
                .map(|name| tokio::spawn(batcher.submit(zone(name), deadline())))
                .collect();
            raft.release(1);
            done(first.await);
            assert!(matches!(next_entry(&mut entries).await, Command::Batch(_)));
            raft.fail_with(failure.clone_reply());
            raft.release(1);
            for answer in rest {
                let got = answer.await;
                match (&failure, &got) {
                    (
                        ForwardReply::NotLeader { leader: a },
                        Ok(Ok(ForwardReply::NotLeader { leader: b })),
                    ) => assert_eq!(a, b),
                    (ForwardReply::NoQuorum(a), Ok(Ok(ForwardReply::NoQuorum(b)))) => {
                        assert_eq!(a, b);
                    }
                    (ForwardReply::Fatal(a), Ok(Ok(ForwardReply::Fatal(b)))) => assert_eq!(a, b),
                    (ForwardReply::Done(_), Ok(Ok(ForwardReply::Fatal(why)))) => {
                        assert!(why.contains("batch of 2 writes"), "{why}");
                    }
                    _ => panic!("{failure:?} came back as {got:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_caller_past_its_deadline_is_told_so_and_its_write_dropped() {
        let (raft, mut entries) = FakeRaft::new();
        let batcher = Batcher::new(raft.clone(), BatchLimits::default());
        let first = tokio::spawn(batcher.submit(zone("a"), deadline()));
        next_entry(&mut entries).await;
        let soon = Instant::now() + Duration::from_millis(20);
        let impatient = tokio::spawn(batcher.submit(zone("b"), soon));
        assert!(matches!(impatient.await, Ok(Err(Missed::Deadline))));
        let patient = tokio::spawn(batcher.submit(zone("c"), deadline()));
        raft.release(2);
        assert!(done(first.await).is_ok());
        // "b" was queued but its caller had gone: only "c" is proposed.
        assert_eq!(next_entry(&mut entries).await, zone("c"));
        assert!(done(patient.await).is_ok());
    }

    impl ForwardReply<CommandResult> {
        fn clone_reply(&self) -> Self {
            match self {
                ForwardReply::Done(r) => ForwardReply::Done(r.clone()),
                ForwardReply::NotLeader { leader } => ForwardReply::NotLeader { leader: *leader },
                ForwardReply::NoQuorum(w) => ForwardReply::NoQuorum(w.clone()),
                ForwardReply::Fatal(w) => ForwardReply::Fatal(w.clone()),
            }
        }
    }
}
