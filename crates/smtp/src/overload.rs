//! The table of open sessions, for overload behaviour (like Postfix's stress mode): while the
//! open sessions are at or above a high-water mark, idle sessions (no mail transaction) get a
//! short timeout, and when every connection slot is taken the session idle the longest is asked
//! to close so that a new client can have its slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postrider_metrics::Metrics;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Open sessions from which the server is in overload: `percent` of `max_connections`, rounded
/// up, at least 1.
pub(crate) fn high_water_mark(max_connections: usize, percent: u8) -> usize {
    max_connections
        .saturating_mul(usize::from(percent))
        .div_ceil(100)
        .max(1)
}

/// How long a client may take for its next command (or TLS handshake): `command_timeout`, or
/// `overload_timeout` when that applies and is shorter.
pub(crate) fn idle_timeout(
    command_timeout: Duration,
    overload_timeout: Option<Duration>,
) -> Duration {
    overload_timeout.map_or(command_timeout, |t| t.min(command_timeout))
}

/// When a client that got its last reply at `last_reply` must have sent its next command.
pub(crate) fn command_deadline(
    last_reply: Instant,
    command_timeout: Duration,
    overload_timeout: Option<Duration>,
) -> Instant {
    last_reply + idle_timeout(command_timeout, overload_timeout)
}

/// The session to close for a newcomer: among `(id, idle since)` of idle sessions, the one
/// idle the longest; of those idle since the same millisecond, the oldest (lowest id).
fn idlest(candidates: impl Iterator<Item = (u64, u64)>) -> Option<u64> {
    candidates
        .min_by_key(|&(id, since)| (since, id))
        .map(|(id, _)| id)
}

/// What the table knows of one session, updated by the session without the table's lock.
#[derive(Debug)]
struct SessionSlot {
    /// Milliseconds since the table's epoch, plus one, at which the session became idle; 0
    /// while it is in a mail transaction.
    idle_since: AtomicU64,
    /// Cancelled when the session should close to make room.
    evict: CancellationToken,
}

/// Every open session of a server, the overload state and its gauge.
#[derive(Debug)]
pub(crate) struct SessionTable {
    slots: Mutex<HashMap<u64, Arc<SessionSlot>>>,
    next_id: AtomicU64,
    high_water: usize,
    overload: watch::Sender<bool>,
    metrics: Metrics,
    epoch: Instant,
}

/// One session's entry in the table; removes it when dropped.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    table: Arc<SessionTable>,
    id: u64,
    slot: Arc<SessionSlot>,
}

impl SessionTable {
    /// An empty table; overload starts at `high_water` open sessions.
    pub(crate) fn new(high_water: usize, metrics: Metrics) -> Arc<Self> {
        metrics.smtp_overload.set(0);
        Arc::new(SessionTable {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            high_water,
            overload: watch::Sender::new(false),
            metrics,
            epoch: Instant::now(),
        })
    }

    /// Adds a new session, idle since now.
    pub(crate) fn register(self: &Arc<Self>) -> SessionEntry {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(SessionSlot {
            idle_since: AtomicU64::new(self.stamp(Instant::now())),
            evict: CancellationToken::new(),
        });
        let mut slots = self.lock();
        slots.insert(id, Arc::clone(&slot));
        self.update_overload(slots.len());
        SessionEntry {
            table: Arc::clone(self),
            id,
            slot,
        }
    }

    /// Whether the server is in overload, and its changes.
    pub(crate) fn overload(&self) -> watch::Receiver<bool> {
        self.overload.subscribe()
    }

    /// Asks the session idle the longest (not already asked) to close; false when no session
    /// is idle.
    pub(crate) fn evict_idlest(&self) -> bool {
        let slots = self.lock();
        let candidates = slots.iter().filter_map(|(&id, slot)| {
            let since = slot.idle_since.load(Ordering::Relaxed);
            (since != 0 && !slot.evict.is_cancelled()).then_some((id, since))
        });
        match idlest(candidates).and_then(|id| slots.get(&id)) {
            Some(slot) => {
                slot.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn update_overload(&self, open: usize) {
        let overloaded = open >= self.high_water;
        self.overload.send_if_modified(|state| {
            let changed = *state != overloaded;
            *state = overloaded;
            changed
        });
        self.metrics.smtp_overload.set(i64::from(overloaded));
    }

    fn stamp(&self, at: Instant) -> u64 {
        let millis = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(millis).unwrap_or(u64::MAX - 1) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionSlot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SessionEntry {
    /// The session waits for a command outside a mail transaction, since `since`: it may get
    /// the overload timeout and be closed for a newcomer.
    pub(crate) fn mark_idle(&self, since: Instant) {
        self.slot
            .idle_since
            .store(self.table.stamp(since), Ordering::Relaxed);
    }

    /// The session is in a mail transaction: it is left alone.
    pub(crate) fn mark_busy(&self) {
        self.slot.idle_since.store(0, Ordering::Relaxed);
    }

    /// Cancelled when the session should close to make room for a newcomer.
    pub(crate) fn eviction(&self) -> CancellationToken {
        self.slot.evict.clone()
    }
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        let mut slots = self.table.lock();
        slots.remove(&self.id);
        self.table.update_overload(slots.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_water_mark_rounds_up() {
        assert_eq!(high_water_mark(1000, 80), 800);
        assert_eq!(high_water_mark(10, 80), 8);
        assert_eq!(high_water_mark(3, 80), 3);
        assert_eq!(high_water_mark(10, 100), 10);
        assert_eq!(high_water_mark(1, 1), 1);
    }

    #[test]
    fn overload_shortens_the_command_deadline_only() {
        let now = Instant::now();
        let minutes = Duration::from_secs(300);
        let short = Duration::from_secs(10);
        assert_eq!(command_deadline(now, minutes, None), now + minutes);
        assert_eq!(command_deadline(now, minutes, Some(short)), now + short);
        assert_eq!(
            command_deadline(now, short, Some(minutes)),
            now + short,
            "never longer than the command timeout"
        );
    }

    #[test]
    fn the_session_idle_longest_is_chosen() {
        assert_eq!(idlest([(1, 50), (2, 10), (3, 30)].into_iter()), Some(2));
        assert_eq!(idlest([(7, 10), (4, 10), (5, 10)].into_iter()), Some(4));
        assert_eq!(idlest(std::iter::empty()), None);
    }

    #[test]
    fn table_tracks_overload_and_evicts_idle_sessions_once() {
        let metrics = Metrics::new();
        let table = SessionTable::new(2, metrics.clone());
        let overload = table.overload();
        let first = table.register();
        assert!(!*overload.borrow());
        let second = table.register();
        assert!(*overload.borrow());
        assert_eq!(metrics.smtp_overload.get(), 1);
        let now = Instant::now();
        first.mark_idle(now + Duration::from_secs(5));
        second.mark_idle(now);
        assert!(table.evict_idlest());
        assert!(second.eviction().is_cancelled(), "idle the longest");
        assert!(!first.eviction().is_cancelled());
        first.mark_busy();
        assert!(!table.evict_idlest(), "busy or already asked: nobody left");
        drop(second);
        assert!(!*overload.borrow());
        assert_eq!(metrics.smtp_overload.get(), 0);
    }
}
