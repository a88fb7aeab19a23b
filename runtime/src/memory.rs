//! Giving memory back. glibc's allocator keeps what a burst of work freed (a first list of
//! thousands of objects, a pass that rendered thousands of mirrors) for later reuse, so a
//! process's resident size stays at its high-water mark long after. Controllers call
//! [`release`] after heavy work; [`run`] then asks the allocator, at most once a second, to
//! return its free pages (`malloc_trim(0)`). [`tune`], called first thing in `main`, keeps
//! the allocator from hoarding in the first place: one arena (rather than eight per core: the
//! async runtime's threads would each keep their own free memory), and large buffers (a list response) always in
//! their own mappings, given back when freed (glibc otherwise raises that threshold after the
//! first such buffer, and later ones fragment the heap). Elsewhere than glibc all of it does
//! nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static WANTED: AtomicBool = AtomicBool::new(false);

/// Asks for freed heap memory to be returned to the operating system soon.
pub fn release() {
    WANTED.store(true, Ordering::Relaxed);
}

/// Returns freed memory when asked, at most once a second, until `shutdown`.
pub async fn run(shutdown: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {
                if WANTED.swap(false, Ordering::Relaxed) {
                    trim();
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Allocator settings for a long-running controller process (see the module docs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: mallopt takes two integers and only changes allocator parameters; it is safe to
    // call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Allocator settings (glibc only).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointer, only a padding size, and is safe to call from any
    // thread at any time (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
