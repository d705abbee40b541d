//! Ports for the servers a test starts (OMAs, gates, MariaDB): below the kernel's ephemeral
//! range, where no outgoing connection is ever given one; random, checked free by binding, and
//! never handed out twice by one process. A port taken from the ephemeral range (bind to 0, close,
//! let the server bind it later) can meanwhile become the local end of any outgoing connection:
//! seen as an OMA failing to start with "Address already in use" (1 full run in 5, with a
//! second test process on the machine).

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port the kernel hands to outgoing connections (Linux's default when unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(32768)
}

/// A free TCP port on 127.0.0.1 for a server this process starts.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let top = ephemeral_start().saturating_sub(1);
    if top > 12_000 {
        for _ in 0..500 {
            let port = 10_000 + (uuid::Uuid::new_v4().as_u128() % u128::from(top - 10_000)) as u16;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    // No room below the ephemeral range (an unusual kernel setting): let the kernel choose.
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    given.insert(port);
    port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        assert!(ports.iter().all(|p| *p >= 10_000 && *p < ephemeral_start()), "{ports:?}");
        for p in ports.iter().take(20) {
            TcpListener::bind(("127.0.0.1", *p)).expect("still free");
        }
    }
}
