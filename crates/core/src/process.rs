//! Which process owns a build or a temporary directory, and whether it still runs.
//!
//! A process is named by its pid and its start time (clock ticks since boot, field 22 of
//! `/proc/<pid>/stat`), so that a recycled pid is not taken for the original process. On
//! systems without `/proc` nothing is ever found dead.

use std::fmt;
use std::str::FromStr;

/// A process on this machine: pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessStamp {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (0 when unknown).
    pub start: u64,
}

impl ProcessStamp {
    /// This process.
    pub fn current() -> ProcessStamp {
        let pid = std::process::id();
        ProcessStamp {
            pid,
            start: start_time(pid).unwrap_or(0),
        }
    }

    /// Whether the process is known to have ended: `/proc` exists, and there is no process
    /// with this pid or it started at another time.
    pub fn is_dead(&self) -> bool {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return false;
        }
        match start_time(self.pid) {
            None => true,
            Some(start) => self.start != 0 && start != self.start,
        }
    }
}

/// Field 22 (`starttime`) of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

impl fmt::Display for ProcessStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pid, self.start)
    }
}

/// A process stamp that is not `PID-START`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a process stamp (PID-START)")]
pub struct BadProcessStamp;

impl FromStr for ProcessStamp {
    type Err = BadProcessStamp;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (pid, start) = s.split_once('-').ok_or(BadProcessStamp)?;
        Ok(ProcessStamp {
            pid: pid.parse().map_err(|_| BadProcessStamp)?,
            start: start.parse().map_err(|_| BadProcessStamp)?,
        })
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or `localhost`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_lives_and_a_finished_child_does_not() {
        let me = ProcessStamp::current();
        assert!(!me.is_dead());
        assert_eq!(me.to_string().parse::<ProcessStamp>(), Ok(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(ProcessStamp { pid, start: 1 }.is_dead());
        // The same pid with another start time is another process.
        assert!(ProcessStamp {
            pid: me.pid,
            start: me.start + 1
        }
        .is_dead());
        assert!("12".parse::<ProcessStamp>().is_err());
        assert!("a-1".parse::<ProcessStamp>().is_err());
    }
}
