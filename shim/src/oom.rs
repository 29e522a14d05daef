//! OOM events from the guest to containerd. The guest names the container, and the guest is
//! hostile: an event reaches containerd only for a container this shim owns, and at most
//! [`OOM_BURST`] at once then one per [`OOM_REFILL`] per container (a token bucket), so a
//! guest flooding OOM notifications cannot flood containerd. Dropped events are counted
//! and reported in one warning per [`DROP_WARN_INTERVAL`] at most.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::events::{EventSink, TaskEvent};

/// OOM events of one container published back to back.
pub const OOM_BURST: u32 = 3;
/// Then one more per this interval.
pub const OOM_REFILL: Duration = Duration::from_secs(1);
/// At most one warning about dropped events per interval (the first at once).
pub const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Characters of a guest-named id quoted in a warning.
const ID_QUOTE_MAX: usize = 80;

/// What happens to one OOM event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Publish,
    /// The guest named a container this shim does not own.
    NotOwned,
    /// Over the container's rate.
    RateLimited,
}

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket was full).
    refilled: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Bucket {
            tokens: OOM_BURST,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        let new = elapsed.as_nanos() / OOM_REFILL.as_nanos().max(1);
        if new == 0 {
            return;
        }
        let tokens = u128::from(self.tokens).saturating_add(new);
        if tokens >= u128::from(OOM_BURST) {
            self.tokens = OOM_BURST;
            self.refilled = now;
        } else {
            // Below OOM_BURST, so it fits; the time of the tokens not yet earned is kept.
            self.tokens = tokens as u32;
            self.refilled += OOM_REFILL * new as u32;
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Decides which OOM events are published, and counts the others.
#[derive(Debug, Default)]
pub struct OomGate {
    buckets: HashMap<String, Bucket>,
    not_owned: u64,
    rate_limited: u64,
    last_warning: Option<Instant>,
}

impl OomGate {
    /// The verdict on an event for `container_id` (`owned`: a container of this shim) at
    /// `now`.
    pub fn admit(&mut self, container_id: &str, owned: bool, now: Instant) -> Verdict {
        if !owned {
            self.not_owned = self.not_owned.saturating_add(1);
            return Verdict::NotOwned;
        }
        if !self.buckets.contains_key(container_id) {
            // A full bucket is the same as none: the map holds only containers that
            // published lately, whatever the ids the guest sent before.
            self.buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < OOM_BURST
            });
        }
        let bucket = self
            .buckets
            .entry(container_id.to_owned())
            .or_insert_with(|| Bucket::full(now));
        if bucket.take(now) {
            Verdict::Publish
        } else {
            self.rate_limited = self.rate_limited.saturating_add(1);
            Verdict::RateLimited
        }
    }

    /// `Some((not_owned, rate_limited))`, the drops since the last warning, when one is
    /// due at `now`.
    pub fn warning_due(&mut self, now: Instant) -> Option<(u64, u64)> {
        if self.not_owned == 0 && self.rate_limited == 0 {
            return None;
        }
        let due = self
            .last_warning
            .is_none_or(|t| now.saturating_duration_since(t) >= DROP_WARN_INTERVAL);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some((
            std::mem::take(&mut self.not_owned),
            std::mem::take(&mut self.rate_limited),
        ))
    }

    /// Containers with a bucket (tests).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Forwards the OOM events `next` yields until it fails (the VM is gone), publishing those
/// the [`OomGate`] lets through; `owns` says whether this shim owns a container. Returns
/// the error that ended it.
pub async fn forward<E, F, Fut>(
    sandbox_id: &str,
    mut next: F,
    owns: impl Fn(&str) -> bool,
    events: &dyn EventSink,
) -> E
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, E>>,
{
    let mut gate = OomGate::default();
    loop {
        let container_id = match next().await {
            Ok(id) => id,
            Err(e) => return e,
        };
        let now = Instant::now();
        let verdict = gate.admit(&container_id, owns(&container_id), now);
        if verdict == Verdict::Publish {
            events.publish(TaskEvent::Oom { container_id }).await;
            continue;
        }
        if let Some((not_owned, rate_limited)) = gate.warning_due(now) {
            log::warn!(
                "OOM events of {sandbox_id} dropped: {not_owned} for containers this shim does \
                 not own, {rate_limited} over the rate of {OOM_BURST} then 1 per {OOM_REFILL:?} \
                 (last: {:?})",
                quote(&container_id)
            );
        }
    }
}

/// At most [`ID_QUOTE_MAX`] characters of a guest-named id.
fn quote(id: &str) -> String {
    id.chars().take(ID_QUOTE_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RecordedEvents;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    fn oom(id: &str) -> TaskEvent {
        TaskEvent::Oom {
            container_id: id.into(),
        }
    }

    /// Runs [`forward`] over `sent` (then the source ends) with `owned` the shim's
    /// containers; returns what was published.
    async fn forwarded(sent: Vec<String>, owned: &[&str]) -> Vec<TaskEvent> {
        let queue = Mutex::new(VecDeque::from(sent));
        let sink = RecordedEvents::default();
        let end: &str = forward(
            "pod1",
            || {
                let next = queue.lock().unwrap().pop_front();
                async move { next.ok_or("the VM is gone") }
            },
            |id| owned.contains(&id),
            &sink,
        )
        .await;
        assert_eq!(end, "the VM is gone");
        sink.take()
    }

    #[tokio::test]
    async fn events_for_containers_the_shim_does_not_own_are_dropped() {
        let sent = ["other-pod-c", "c1", "../../etc", "", "c1"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            forwarded(sent, &["c1", "c2"]).await,
            vec![oom("c1"), oom("c1")]
        );
    }

    #[tokio::test]
    async fn a_flood_of_events_reaches_containerd_as_a_burst() {
        let mut sent = vec!["c1".to_string(); 10_000];
        sent.extend(vec!["c2".to_string(); 10]);
        let published = forwarded(sent, &["c1", "c2"]).await;
        let count = |id| published.iter().filter(|e| **e == oom(id)).count();
        assert_eq!(count("c1"), OOM_BURST as usize);
        // Each container has its own budget.
        assert_eq!(count("c2"), OOM_BURST as usize);
    }

    #[test]
    fn the_bucket_refills_one_per_interval() {
        let mut g = OomGate::default();
        let t0 = Instant::now();
        for _ in 0..OOM_BURST {
            assert_eq!(g.admit("c1", true, t0), Verdict::Publish);
        }
        assert_eq!(g.admit("c1", true, t0), Verdict::RateLimited);
        let t1 = t0 + OOM_REFILL;
        assert_eq!(g.admit("c1", true, t1), Verdict::Publish);
        assert_eq!(g.admit("c1", true, t1), Verdict::RateLimited);
        // Half an interval earns nothing, the other half does.
        assert_eq!(
            g.admit("c1", true, t1 + OOM_REFILL / 2),
            Verdict::RateLimited
        );
        assert_eq!(g.admit("c1", true, t1 + OOM_REFILL), Verdict::Publish);
        // A long quiet time refills up to the burst, not beyond.
        let later = t1 + OOM_REFILL * 100;
        for _ in 0..OOM_BURST {
            assert_eq!(g.admit("c1", true, later), Verdict::Publish);
        }
        assert_eq!(g.admit("c1", true, later), Verdict::RateLimited);
        assert_eq!(g.admit("nope", false, later), Verdict::NotOwned);
    }

    #[test]
    fn drops_are_warned_about_once_per_interval() {
        let mut g = OomGate::default();
        let t0 = Instant::now();
        assert_eq!(g.warning_due(t0), None, "nothing dropped");
        g.admit("x", false, t0);
        assert_eq!(g.warning_due(t0), Some((1, 0)));
        for _ in 0..OOM_BURST + 5 {
            g.admit("c1", true, t0);
        }
        g.admit("y", false, t0);
        assert_eq!(g.warning_due(t0 + DROP_WARN_INTERVAL / 2), None);
        assert_eq!(g.warning_due(t0 + DROP_WARN_INTERVAL), Some((1, 5)));
        assert_eq!(g.warning_due(t0 + DROP_WARN_INTERVAL * 3), None);
    }

    #[test]
    fn buckets_of_quiet_containers_are_forgotten() {
        let mut g = OomGate::default();
        let t0 = Instant::now();
        g.admit("c1", true, t0);
        g.admit("c2", true, t0);
        assert_eq!(g.tracked(), 2);
        // Full again after the refill: forgotten when another container needs a bucket.
        g.admit("c3", true, t0 + OOM_REFILL * OOM_BURST);
        assert_eq!(g.tracked(), 1);
        // Ids the shim does not own never get one.
        for i in 0..1000 {
            g.admit(&format!("guest-{i}"), false, t0);
        }
        assert_eq!(g.tracked(), 1);
    }
}
