//! Standard output that lets its reader go away (`tiercache stats | head`, `tiercache watch |
//! head -1`).
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader is gone fails with EPIPE, and
//! `println!` panics on it. Every command prints through here instead: a broken pipe marks
//! stdout closed and is otherwise ignored (later output is dropped, the command ends as it would
//! have, with its own exit code and no message); any other write error is a failure (exit 3).
//! Resetting SIGPIPE to its default would need `unsafe` (libc), which the workspace forbids.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::exit::Failure;

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether a write found stdout's reader gone: a command that would print more (`watch`)
/// stops.
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Writes with `f` to stdout and flushes, so a pipe sees each line as it comes.
pub fn write(
    f: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>,
) -> Result<(), Failure> {
    if closed() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    match f(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(Failure::server(
            anyhow::Error::new(e).context("cannot write to stdout"),
        )),
    }
}

/// Writes one line (`println!` that survives a broken pipe).
pub fn line(args: fmt::Arguments<'_>) -> Result<(), Failure> {
    write(|out| writeln!(out, "{args}"))
}

/// `println!` through [`line`]: returns `Result<(), Failure>`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_pipe_is_not_a_failure_but_other_errors_are() {
        // Only the error mapping: the real pipe is tested against the binary
        // (tests/invalidation_and_admin_commands.rs).
        assert!(write(|_| Err(io::Error::from(io::ErrorKind::PermissionDenied))).is_err());
        assert!(!closed());
        assert!(write(|_| Err(io::Error::from(io::ErrorKind::BrokenPipe))).is_ok());
        assert!(closed());
        // Once closed, nothing more is written.
        assert!(write(|_| unreachable!("stdout is closed")).is_ok());
    }
}
