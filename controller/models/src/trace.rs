//! The guest kernel's msync trace: `syscalls:sys_enter_msync` and
//! `sys_exit_msync` tracepoints, streamed from tracefs to ttyS2 during the
//! workload boot (vm-images/init) and kept with the trial as
//! `workload.trace.log`. Like Tracee's `sys_msync` event: address, length,
//! flags, return value, timestamp, and the calling task. It is the kernel's
//! own account, independent of the workload's `MSYNC` lines.

use serde::Serialize;

/// One msync call, entry paired with exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TracedMsync {
    /// Seconds since the guest booted, as the kernel stamped the entry.
    pub time: String,
    pub task: String,
    pub start: u64,
    pub len: u64,
    pub flags: u64,
    /// The return value; `None` if the call had not returned when the
    /// trace ended (the crash).
    pub ret: Option<i64>,
}

impl TracedMsync {
    pub fn describe(&self) -> String {
        let ret = self.ret.map_or("(no return: crashed)".to_string(), |r| r.to_string());
        format!(
            "{} {}: msync({:#x}, {}, {}) = {ret}",
            self.time,
            self.task,
            self.start,
            self.len,
            flag_names(self.flags)
        )
    }
}

fn flag_names(flags: u64) -> String {
    let mut names = Vec::new();
    for (bit, name) in [(4, "MS_SYNC"), (1, "MS_ASYNC"), (2, "MS_INVALIDATE")] {
        if flags & bit != 0 {
            names.push(name.to_string());
        }
    }
    if flags & !7 != 0 {
        names.push(format!("{:#x}", flags & !7));
    }
    match names.is_empty() {
        true => "0".into(),
        false => names.join("|"),
    }
}

/// The trace in a trial's record: how many calls, how many failed, and the
/// last ones before the trace ended (the crash, or the end of the run).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceSummary {
    pub calls: u64,
    pub failed_calls: u64,
    pub unreturned_calls: u64,
    /// Events the trace buffer dropped while the serial port drained
    /// (reported at the end of a run that was not killed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_events: Option<u64>,
    pub last_calls: Vec<String>,
}

pub const LAST_CALLS_KEPT: usize = 8;

/// Parses `trace_pipe` text. Lines that are not msync events (or are cut
/// off by the kill) are skipped: the trace is evidence, not a protocol.
pub fn parse(text: &str) -> Vec<TracedMsync> {
    let mut calls: Vec<TracedMsync> = Vec::new();
    for line in text.lines() {
        let Some((head, event)) = line.split_once(": sys_msync") else {
            continue;
        };
        let mut words = head.split_whitespace();
        let Some(task) = words.next() else { continue };
        let Some(time) = head.split_whitespace().last() else {
            continue;
        };
        if let Some(args) = event.strip_prefix('(').and_then(|a| a.strip_suffix(')')) {
            let field = |name: &str| {
                args.split(", ")
                    .find_map(|kv| kv.strip_prefix(name))
                    .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            };
            let (Some(start), Some(len), Some(flags)) = (field("start: "), field("len: "), field("flags: ")) else {
                continue;
            };
            calls.push(TracedMsync {
                time: time.to_string(),
                task: task.to_string(),
                start,
                len,
                flags,
                ret: None,
            });
        } else if let Some(ret) = event.strip_prefix(" -> ") {
            let value = match ret.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok().map(|v| v as i64),
                None => ret.parse::<i64>().ok(),
            };
            // The exit belongs to the task's last call still open.
            if let Some(open) = calls.iter_mut().rev().find(|c| c.task == task && c.ret.is_none()) {
                open.ret = value;
            }
        }
    }
    calls
}

pub fn summarize(calls: &[TracedMsync]) -> TraceSummary {
    TraceSummary {
        dropped_events: None,
        calls: calls.len() as u64,
        failed_calls: calls.iter().filter(|c| c.ret.is_some_and(|r| r != 0)).count() as u64,
        unreturned_calls: calls.iter().filter(|c| c.ret.is_none()).count() as u64,
        last_calls: calls[calls.len().saturating_sub(LAST_CALLS_KEPT)..]
            .iter()
            .map(TracedMsync::describe)
            .collect(),
    }
}

/// Reads and summarizes a trace file; `None` if there is none (tracing
/// off, or a kernel without the tracepoints).
pub fn read_summary(path: &std::path::Path) -> Option<TraceSummary> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let calls = parse(&text);
    let dropped = text
        .lines()
        .find_map(|l| l.strip_prefix("crashlab-trace-overrun: "))
        .and_then(|n| n.trim().parse().ok());
    (!calls.is_empty()).then(|| TraceSummary {
        dropped_events: dropped,
        ..summarize(&calls)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
 crashlab-worklo-128     [000] ...1.     4.293859: sys_msync(start: 7ff958000000, len: 1000, flags: 4)
 crashlab-worklo-128     [000] ...1.     4.311631: sys_msync -> 0x0
 crashlab-worklo-129     [000] ...1.     4.312000: sys_msync(start: 7ff958001000, len: 1001, flags: 6)
 crashlab-worklo-128     [000] ...1.     4.314803: sys_msync(start: 7ff958001000, len: 1000, flags: 1)
 crashlab-worklo-129     [000] ...1.     4.315000: sys_msync -> 0xfffffffffffffff4
 crashlab-worklo-128     [000] ...1.     4.317302: sys_msync(start: 7ff9580";

    #[test]
    fn entries_pair_with_their_tasks_exits_and_a_cut_tail_is_skipped() {
        let calls = parse(TRACE);
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].ret, Some(0));
        assert_eq!(
            (calls[0].start, calls[0].len, calls[0].flags),
            (0x7ff9_5800_0000, 0x1000, 4)
        );
        assert_eq!(calls[1].ret, Some(-12), "task 129's ENOMEM");
        assert_eq!(calls[2].ret, None, "the crash came before it returned");
        assert_eq!(
            calls[1].describe(),
            "4.312000 crashlab-worklo-129: msync(0x7ff958001000, 4097, MS_SYNC|MS_INVALIDATE) = -12"
        );
        let summary = summarize(&calls);
        assert_eq!(
            (summary.calls, summary.failed_calls, summary.unreturned_calls),
            (3, 1, 1)
        );
        assert_eq!(summary.last_calls.len(), 3);
    }

    #[test]
    fn other_lines_are_not_msync_calls() {
        assert!(parse("garbage\n  cat-90 [000] 1.0: sys_write(fd: 1)\n").is_empty());
    }
}
