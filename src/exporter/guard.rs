//! Defences against hostile clients: connections per peer, failed
//! authentication per peer, and log lines that cannot be flooded.
//!
//! A peer is an IPv4 address, or an IPv6 /64 (one host usually holds a whole
//! /64, so counting single IPv6 addresses would limit nothing).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The most peers remembered for failed authentication; past it, entries
/// that block nobody are forgotten first.
const MAX_AUTH_RECORDS: usize = 4096;

/// The peer an address counts as.
pub(super) fn peer_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Limits on what one peer may hold or try.
#[derive(Clone, Copy, Debug)]
pub(super) struct PeerLimits {
    /// Connections open at once.
    pub(super) connections: usize,
    /// Failed authentications within `window` before the peer is blocked.
    pub(super) auth_failures: u32,
    pub(super) window: Duration,
    /// How long a blocked peer stays blocked.
    pub(super) block: Duration,
}

#[derive(Debug)]
struct AuthRecord {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Table {
    connections: HashMap<IpAddr, usize>,
    auth: HashMap<IpAddr, AuthRecord>,
}

/// What each peer holds and has tried.
#[derive(Debug)]
pub(super) struct Peers {
    limits: PeerLimits,
    table: Mutex<Table>,
}

/// A connection counted against its peer, until dropped.
#[derive(Debug)]
pub(super) struct PeerSlot {
    peers: Arc<Peers>,
    peer: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut table = self.peers.lock();
        if let Some(n) = table.connections.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                table.connections.remove(&self.peer);
            }
        }
    }
}

impl Peers {
    pub(super) fn new(limits: PeerLimits) -> Arc<Self> {
        Arc::new(Peers {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection of `ip`'s peer; `None` if the peer holds its
    /// share already.
    pub(super) fn connect(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let peer = peer_of(ip);
        let mut table = self.lock();
        let held = table.connections.entry(peer).or_insert(0);
        if *held >= self.limits.connections {
            return None;
        }
        *held += 1;
        Some(PeerSlot {
            peers: self.clone(),
            peer,
        })
    }

    /// How long `ip`'s peer stays blocked for failed authentication, if it is.
    pub(super) fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let table = self.lock();
        let until = table.auth.get(&peer_of(ip))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failed authentication of `ip`'s peer; returns whether it is
    /// blocked now.
    pub(super) fn auth_failed(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let peer = peer_of(ip);
        let limits = self.limits;
        let mut table = self.lock();
        if !table.auth.contains_key(&peer) && table.auth.len() >= MAX_AUTH_RECORDS {
            forget_some(&mut table.auth, now, limits.window);
        }
        let record = table.auth.entry(peer).or_insert(AuthRecord {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(record.window_start) >= limits.window {
            record.window_start = now;
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        if record.failures >= limits.auth_failures {
            record.blocked_until = Some(now + limits.block);
            record.failures = 0;
            record.window_start = now;
        }
        record.blocked_until.is_some_and(|until| until > now)
    }
}

/// Makes room in the failed-authentication table: forgets the peers that
/// block nothing and whose window has passed, else one entry at random.
fn forget_some(auth: &mut HashMap<IpAddr, AuthRecord>, now: Instant, window: Duration) {
    let before = auth.len();
    auth.retain(|_, r| {
        r.blocked_until.is_some_and(|until| until > now)
            || now.duration_since(r.window_start) < window
    });
    if auth.len() == before {
        if let Some(peer) = auth.keys().next().copied() {
            auth.remove(&peer);
        }
    }
}

/// A log line that is written at most once per `every`, saying how many
/// were held back meanwhile.
#[derive(Debug)]
pub(super) struct Throttle {
    every: Duration,
    next: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl Throttle {
    pub(super) fn new(every: Duration) -> Self {
        Throttle {
            every,
            next: Mutex::new(None),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` if a line may be written now.
    pub(super) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if next.is_some_and(|at| now < at) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *next = Some(now + self.every);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PeerLimits {
        PeerLimits {
            connections: 2,
            auth_failures: 3,
            window: Duration::from_secs(10),
            block: Duration::from_secs(30),
        }
    }

    #[test]
    fn ipv6_peers_are_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_of(a), peer_of(b));
        assert_ne!(peer_of(a), peer_of(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(peer_of(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn connections_per_peer_are_capped_and_returned() {
        let peers = Peers::new(limits());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = peers.connect(ip).unwrap();
        let _b = peers.connect(ip).unwrap();
        assert!(peers.connect(ip).is_none());
        assert!(peers.connect("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(peers.connect(ip).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_authentication_blocks_the_peer_for_a_while() {
        let peers = Peers::new(limits());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!peers.auth_failed(ip));
        assert!(!peers.auth_failed(ip));
        assert!(
            peers.auth_failed(ip),
            "the third failure in the window blocks"
        );
        assert_eq!(peers.blocked(ip), Some(Duration::from_secs(30)));
        assert_eq!(peers.blocked("10.0.0.2".parse().unwrap()), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(peers.blocked(ip), None);
        // Failures spread wider than the window never block.
        for _ in 0..10 {
            assert!(!peers.auth_failed(ip));
            tokio::time::advance(Duration::from_secs(6)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_table_stays_bounded() {
        let peers = Peers::new(limits());
        for i in 0..(MAX_AUTH_RECORDS as u32 + 100) {
            peers.auth_failed(IpAddr::V4(i.into()));
        }
        assert!(peers.lock().auth.len() <= MAX_AUTH_RECORDS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_line_says_how_many_were_held_back() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.admit(), Some(5));
    }
}
