//! Leader election among the zone control plane's replicas, on a `coordination.k8s.io/v1`
//! Lease (as client-go's `leaderelection` does): every replica serves discovery and DNS, only
//! the leader writes to the API (`ServiceExport` status, `ServiceImport`s), so replicas never
//! fight over the same objects.
//!
//! - The Lease names its holder, when it was last renewed and for how long that holds. A
//!   replica takes it when it has no holder or the holder's renewal is older than the
//!   duration ([`decide`], pure); the leader renews every `renew_interval`.
//! - Every write is a `PUT` carrying the `resourceVersion` it read, so two replicas that both
//!   see an expired Lease cannot both win: the second gets `409 Conflict` and waits.
//! - A leader that cannot renew steps down after 2/3 of the duration, before anyone else can
//!   take the Lease; a leader that shuts down steps down and then releases the Lease (no
//!   holder), so the next replica takes over at its next check instead of after the duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// What a replica does with the Lease as it finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder's time ran out: take it.
    Acquire,
    /// I hold it: renew.
    Renew,
    /// Someone else holds it and its time has not run out.
    Wait,
}

/// The decision for replica `me` at `now`, given the Lease's spec (none: no Lease yet).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        None | Some("") => Decision::Acquire,
        Some(holder) if holder == me => Decision::Renew,
        Some(_) => {
            let duration =
                SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
            match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
                Some(renewed) if now.duration_since(renewed.0) < duration => Decision::Wait,
                _ => Decision::Acquire,
            }
        }
    }
}

/// The spec `me` writes for `decision` (not [`Decision::Wait`]).
pub fn next_spec(
    current: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let held_by_me = current.and_then(|c| c.holder_identity.as_deref()) == Some(me);
    let transitions = current.and_then(|c| c.lease_transitions).unwrap_or(0);
    let had_holder = current
        .and_then(|c| c.holder_identity.as_deref())
        .is_some_and(|h| !h.is_empty());
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: if held_by_me {
            current.and_then(|c| c.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if held_by_me || !had_holder {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// The spec a leader leaves behind when it shuts down: no holder.
pub fn released_spec(current: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        ..current.clone()
    }
}

/// Contends for one Lease as one replica.
#[derive(Clone)]
pub struct LeaseElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_interval: Duration,
}

impl std::fmt::Debug for LeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_conflict() || status.is_already_exists())
}

impl LeaseElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: impl Into<String>,
        identity: impl Into<String>,
        duration: Duration,
        renew_interval: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            renew_interval,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round at `now`: reads the Lease and takes or renews it if [`decide`] says so.
    /// Returns whether this replica holds it now. Losing a race (`409`) is `Ok(false)`.
    pub async fn step(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        );
        if decision == Decision::Wait {
            return Ok(false);
        }
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(next_spec(None, &self.identity, now, self.duration)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // The `resourceVersion` read above makes this a compare-and-swap.
                lease.spec = Some(next_spec(
                    lease.spec.as_ref(),
                    &self.identity,
                    now,
                    self.duration,
                ));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if decision == Decision::Acquire {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired the leader Lease");
                }
                Ok(true)
            }
            Err(err) if is_conflict(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up if this replica holds it.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released_spec(spec));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it meanwhile: it is not ours any more.
            Err(err) if is_conflict(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Contends until `stopped`, publishing on `leader` whether this replica leads. On the way
    /// out, a leader steps down (publishes `false`) before it releases the Lease.
    pub async fn run(
        self,
        leader: watch::Sender<bool>,
        stopped: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        // Without a renewal for this long, the leader steps down: well before the Lease (whose
        // renewal time the others see) runs out.
        let renew_deadline = self.duration * 2 / 3;
        let mut renewed_at: Option<tokio::time::Instant> = None;
        loop {
            let leading = match self.step(Timestamp::now()).await {
                Ok(true) => {
                    renewed_at = Some(tokio::time::Instant::now());
                    true
                }
                Ok(false) => {
                    renewed_at = None;
                    false
                }
                Err(err) => {
                    tracing::warn!(lease = %self.name, %err, "leader election: the Lease could not be read or written");
                    renewed_at.is_some_and(|at| at.elapsed() < renew_deadline)
                }
            };
            leader.send_if_modified(|current| {
                if *current == leading {
                    return false;
                }
                *current = leading;
                if leading {
                    tracing::info!(identity = %self.identity, "leading: writing ServiceExport status and ServiceImports");
                } else {
                    tracing::info!(identity = %self.identity, "not leading");
                }
                true
            });
            tokio::select! {
                () = &mut stopped => break,
                () = tokio::time::sleep(self.renew_interval) => {}
            }
        }
        if leader.send_replace(false) {
            if let Err(err) = self.release().await {
                tracing::warn!(lease = %self.name, %err, "could not release the leader Lease; it expires by itself");
            } else {
                tracing::info!(lease = %self.name, "released the leader Lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "b", at(0)), Decision::Acquire);
        let a = held_by("a", 10);
        assert_eq!(decide(Some(&a), "a", at(11)), Decision::Renew);
        assert_eq!(decide(Some(&a), "b", at(11)), Decision::Wait);
        assert_eq!(decide(Some(&a), "b", at(24)), Decision::Wait);
        // Expired at renew + 15 s.
        assert_eq!(decide(Some(&a), "b", at(25)), Decision::Acquire);
        let released = released_spec(&a);
        assert_eq!(decide(Some(&released), "b", at(11)), Decision::Acquire);
        // The holder renews even when late: nobody else took it.
        assert_eq!(decide(Some(&a), "a", at(100)), Decision::Renew);
    }

    #[test]
    fn specs_count_transitions_and_keep_the_acquire_time() {
        let a = held_by("a", 10);
        let renewed = next_spec(Some(&a), "a", at(12), Duration::from_secs(15));
        assert_eq!(renewed.acquire_time, a.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(at(12))));
        assert_eq!(renewed.lease_transitions, Some(2));

        let taken = next_spec(Some(&a), "b", at(30), Duration::from_secs(15));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.lease_duration_seconds, Some(15));

        let first = next_spec(None, "a", at(0), Duration::from_secs(15));
        assert_eq!(first.lease_transitions, Some(0));
    }
}
