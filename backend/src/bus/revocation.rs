//! Revoked sessions as this replica knows them: per person (a token's `sub`), the time before which their tokens
//! no longer count, and the live connections that must close when a revocation reaches them.
//!
//! The bus keeps the list current: the in-memory bus writes it directly; the Redis bus loads it when its subscriber
//! connects (and again after every reconnect, and whenever the revocations' counter in Redis moved), and learns new
//! revocations from their Pub/Sub channel. Revocations only ever grow: a person's time moves forward, never back,
//! so learning one twice, or an older one late, changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The longest `sub` a revocation accepts, in bytes.
pub const PERSON_MAX_BYTES: usize = 256;

/// Whether a token issued at `issued` (its `iat`, seconds) is revoked by a revocation of everything issued before
/// `before`. A token without `iat` cannot show it is newer, so any revocation of its person revokes it.
pub fn revokes(before: u64, issued: Option<u64>) -> bool {
    issued.is_none_or(|issued| issued < before)
}

/// The revocations this replica knows, shared by the bus (which writes them) and the sessions (which watch them).
#[derive(Debug, Clone)]
pub struct Revocations {
    inner: Arc<Mutex<State>>,
    /// Whether the whole list has been loaded at least once: until then a replica cannot tell a revoked token.
    loaded: Arc<watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct State {
    /// Person → their tokens issued before this (seconds since the Unix epoch) are revoked.
    before: HashMap<String, u64>,
    /// Person → the connections of theirs on this replica: watch id, the token's `iat`, and what closes it.
    watches: HashMap<String, Vec<(u64, Option<u64>, CancellationToken)>>,
    next: u64,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            loaded: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Learns that `person`'s tokens issued before `before` are revoked; closes their connections on this replica
    /// that it revokes. Returns how many it closed.
    pub fn learn(&self, person: &str, before: u64) -> usize {
        let mut state = self.lock();
        let known = state.before.entry(person.to_owned()).or_default();
        if *known >= before {
            return 0;
        }
        *known = before;
        let mut closed = 0;
        if let Some(watches) = state.watches.get(person) {
            for (_, issued, close) in watches {
                if revokes(before, *issued) && !close.is_cancelled() {
                    close.cancel();
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Learns a whole list (what a store holds): each entry as [`Revocations::learn`] does.
    pub fn learn_all(&self, list: impl IntoIterator<Item = (String, u64)>) -> usize {
        list.into_iter()
            .map(|(person, before)| self.learn(&person, before))
            .sum()
    }

    /// The whole list has been learned: tokens can be checked against it from now on.
    pub fn set_loaded(&self) {
        self.loaded.send_replace(true);
    }

    /// The time before which `person`'s tokens are revoked, if any.
    pub fn before(&self, person: &str) -> Option<u64> {
        self.lock().before.get(person).copied()
    }

    /// Every revocation known, for a store that lost them.
    pub fn all(&self) -> Vec<(String, u64)> {
        self.lock()
            .before
            .iter()
            .map(|(person, before)| (person.clone(), *before))
            .collect()
    }

    /// Whether the whole list has been loaded.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits until the whole list has been loaded.
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Watches a connection of `person` whose token was issued at `issued`: the watch resolves when a revocation of
    /// it arrives. `Err` with the revocation's time when the token is revoked already. Checking and watching are one
    /// step, so no revocation slips in between.
    pub fn watch(&self, person: &str, issued: Option<u64>) -> Result<Watch, u64> {
        let mut state = self.lock();
        if let Some(&before) = state.before.get(person)
            && revokes(before, issued)
        {
            return Err(before);
        }
        state.next += 1;
        let id = state.next;
        let close = CancellationToken::new();
        state
            .watches
            .entry(person.to_owned())
            .or_default()
            .push((id, issued, close.clone()));
        Ok(Watch {
            list: self.clone(),
            person: person.to_owned(),
            id,
            close,
        })
    }
}

/// One connection watched for revocation; dropping it stops watching.
#[derive(Debug)]
pub struct Watch {
    list: Revocations,
    person: String,
    id: u64,
    close: CancellationToken,
}

impl Watch {
    /// Resolves when the connection's token is revoked.
    pub fn revoked(&self) -> WaitForCancellationFuture<'_> {
        self.close.cancelled()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self.list.lock();
        if let Some(watches) = state.watches.get_mut(&self.person) {
            watches.retain(|(id, ..)| *id != self.id);
            if watches.is_empty() {
                state.watches.remove(&self.person);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_closes_older_tokens_and_tokens_without_iat() {
        let list = Revocations::default();
        let old = list.watch("u-1", Some(100)).unwrap();
        let new = list.watch("u-1", Some(200)).unwrap();
        let no_iat = list.watch("u-1", None).unwrap();
        let other = list.watch("u-2", Some(100)).unwrap();
        assert_eq!(list.learn("u-1", 150), 2);
        assert!(old.close.is_cancelled() && no_iat.close.is_cancelled());
        assert!(!new.close.is_cancelled() && !other.close.is_cancelled());
        // Older or repeated revocations change nothing; a later one reaches the newer token.
        assert_eq!(list.learn("u-1", 120), 0);
        assert_eq!(list.before("u-1"), Some(150));
        assert_eq!(list.watch("u-1", Some(149)).unwrap_err(), 150);
        assert_eq!(list.watch("u-1", None).unwrap_err(), 150);
        assert!(list.watch("u-1", Some(150)).is_ok());
        assert_eq!(list.learn("u-1", 300), 1);
        assert!(new.close.is_cancelled());
    }

    #[test]
    fn dropped_watches_are_forgotten() {
        let list = Revocations::default();
        drop(list.watch("u-1", Some(1)).unwrap());
        assert!(list.lock().watches.is_empty());
        assert!(!list.is_loaded());
        list.learn_all([("u-1".to_owned(), 5)]);
        assert!(!list.is_loaded());
        list.set_loaded();
        assert!(list.is_loaded());
        assert_eq!(list.all(), vec![("u-1".to_owned(), 5)]);
    }
}
