//! Loopback ports for the servers tests and tasks start, chosen so that a port handed out here is never handed out
//! again while its holder lives, by this process or another one.
//!
//! Asking the kernel for port 0 is not enough: the port is free at that instant only. A test that stops Redis or a
//! replica and starts it again on the same port loses the race when, in between, the kernel gives that port to
//! somebody else — another test's server, or any outgoing connection, since port 0 comes from the same ephemeral
//! range as outgoing connections' local ports. So ports come from below the ephemeral range (no outgoing connection
//! ever takes one), each process walks the range from its own starting point, and a port is claimed with a lock file
//! held open until the process exits: the kernel drops the lock with the process, so a crashed run leaves no claim
//! behind.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

/// The lowest port handed out.
const LOW: u32 = 20_000;

/// Where this process is in the range, and the lock files of the ports it holds.
struct Claims {
    next: Option<u32>,
    held: Vec<File>,
}

static CLAIMS: Mutex<Claims> = Mutex::new(Claims {
    next: None,
    held: Vec::new(),
});

/// A loopback port that nothing listens on, that no other live process got from this function, that this process
/// did not hand out before, and that the kernel never assigns to outgoing connections. Falls back to a kernel-chosen
/// port only on a machine whose ephemeral range leaves no room below it.
///
/// # Panics
/// If the kernel has no free loopback port at all.
pub fn free_port() -> u16 {
    let high = ephemeral_low().unwrap_or(32_768);
    if high < LOW + 1_000 {
        return kernel_port();
    }
    let span = high - LOW;
    let mut claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
    let start = *claims.next.get_or_insert_with(|| seed() % span);
    for step in 0..span {
        let offset = (start + step) % span;
        let port = u16::try_from(LOW + offset).expect("below the ephemeral range");
        if !bindable(port) {
            continue;
        }
        if let Some(lock) = claim(port) {
            claims.held.push(lock);
            claims.next = Some((offset + 1) % span);
            return port;
        }
    }
    kernel_port()
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_low() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A starting point that differs between processes started together.
fn seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::process::id()
        .wrapping_mul(7_919)
        .wrapping_add(nanos / 1_000)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Takes the port's lock file, shared by every process on the machine; `None` if another live process holds it.
fn claim(port: u16) -> Option<File> {
    let dir = claims_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{port}.lock")))
        .ok()?;
    file.try_lock().ok()?;
    Some(file)
}

fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("roomcast-ports")
}

fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice_and_stay_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        let high = ephemeral_low().unwrap_or(32_768);
        if high >= LOW + 1_000 {
            assert!(
                ports
                    .iter()
                    .all(|&p| u32::from(p) >= LOW && u32::from(p) < high),
                "{ports:?}"
            );
        }
    }

    #[test]
    fn a_port_something_listens_on_is_skipped() {
        // The port after one just handed out is not claimed yet: something else starts listening on it.
        let busy = free_port() + 1;
        // (If the bind fails, something already listens there, which serves as well.)
        let _listener = TcpListener::bind(("127.0.0.1", busy)).ok();
        // Rewind this process's cursor onto the busy port: it must be passed over.
        CLAIMS.lock().unwrap_or_else(PoisonError::into_inner).next = Some(u32::from(busy) - LOW);
        assert_ne!(free_port(), busy);
    }

    #[test]
    fn another_process_claim_is_respected() {
        let port = free_port();
        // A second open of the same lock file stands for another process: flock locks belong to the open file.
        assert!(claim(port).is_none(), "the claim is held");
    }
}
