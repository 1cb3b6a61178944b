//! CPU time (sampled in the background) and resident memory of a
//! server's whole process tree (odo's workers included), from `/proc`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CPU_SAMPLE: Duration = Duration::from_millis(20);

/// user + system clock ticks of `root` and all its descendants.
fn tree_cpu_ticks(root: u32) -> u64 {
    tree_sum(root, "stat", |stat| {
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        Some((num(1)? as u32, num(11)? + num(12)?))
    })
}

/// Resident memory of `root` and all its descendants, in bytes.
pub(crate) fn tree_rss(root: u32) -> u64 {
    tree_sum(root, "status", |status| {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        // Kernel threads have no VmRSS: they count as nothing.
        Some((field("PPid:")? as u32, field("VmRSS:").unwrap_or(0) * 1024))
    })
}

/// Resident memory of process `pid` alone, in bytes (0 if it is gone).
pub(crate) fn process_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The sum over `root` and its descendants of a figure read from each
/// process's `/proc/PID/<file>`: `parse` gives (parent pid, figure).
fn tree_sum(root: u32, file: &str, parse: impl Fn(&str) -> Option<(u32, u64)>) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // (pid, ppid, figure) of every process.
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join(file)) else {
            continue;
        };
        if let Some((ppid, figure)) = parse(&text) {
            procs.push((pid, ppid, figure));
        }
    }
    let mut tree = vec![root];
    let mut total = 0;
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, figure) in &procs {
            if pid == parent {
                total += figure;
            }
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    total
}

pub(crate) fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples the CPU time of a process tree in the background.
pub(crate) struct CpuSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpuSampler {
    pub(crate) fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let samples = samples.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ticks = tree_cpu_ticks(pid);
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), ticks));
                    std::thread::sleep(CPU_SAMPLE);
                }
            })
        };
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// CPU ticks used between `from` and `to` (nearest samples).
    pub(crate) fn between(&self, from: Instant, to: Instant) -> Option<u64> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let at = |t: Instant| {
            samples
                .iter()
                .min_by_key(|(s, _)| if *s > t { *s - t } else { t - *s })
                .map(|(_, ticks)| *ticks)
        };
        Some(at(to)?.saturating_sub(at(from)?))
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
